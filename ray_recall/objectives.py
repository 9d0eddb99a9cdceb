"""Training objectives: functions of embeddings and scores, never of models.

Shapes: M rows to score (one per sample, or one per position of all-position training), D dims:
user [M, D], pos [M, D]; sampled negatives per row neg [M, N, D]. Scores are inner products
(cosine when the towers normalize their outputs), divided by the temperature T.

Corrections. A softmax over a sample of candidates estimates the softmax over the whole catalog when
each sampled logit is lowered by the log of the candidate's expected count in the sample, log(n q_j)
(q_j its probability under the sampler, n the draws; Bengio & Senecal 2008): `neg_logq` and
`pos_logq` take that value, and the losses subtract it from the tempered logit, s_j / T - log(n q_j).
The target itself is never corrected. Candidates equal to the row's target (or otherwise excluded)
are masked to -inf. `full_softmax_loss` is the exact softmax over every item, in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ray_recall.config import resolve_mode

NEG_INF = float("-inf")


def _scores(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos_score = (user * pos).sum(-1)  # [M]
    neg_score = torch.einsum("bd,bnd->bn", user, neg) if neg is not None else user.new_zeros(len(user), 0)  # [M, N]
    return pos_score, neg_score


def _reduce(per_row: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_row.mean() if reduction == "mean" else per_row


def pointwise_from_scores(pos_score: torch.Tensor, neg_score: torch.Tensor, *, temperature: float = 1.0,
                          neg_mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy: the positive labelled 1, every (unmasked) negative 0, averaged over all logits of a row
    (reduction "none": [M], one value per row; "mean": over the rows, which equals the mean over all logits
    when no negative is masked)."""
    pos_term = F.softplus(-pos_score / temperature)  # -log sigmoid
    neg_term = F.softplus(neg_score / temperature)  # -log (1 - sigmoid)
    if neg_mask is not None:
        neg_term = neg_term.masked_fill(neg_mask, 0.0)
        count = 1.0 + (~neg_mask).sum(-1)
    else:
        count = 1.0 + neg_score.shape[-1]
    return _reduce((pos_term + neg_term.sum(-1)) / count, reduction)


def pairwise_from_scores(pos_score: torch.Tensor, neg_score: torch.Tensor, *, temperature: float = 1.0,
                         neg_mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """BPR: -log sigmoid((s(u, pos) - s(u, neg)) / T), averaged over a row's (unmasked) pairs."""
    terms = -F.logsigmoid((pos_score[:, None] - neg_score) / temperature)
    if neg_mask is not None:
        terms = terms.masked_fill(neg_mask, 0.0)
        count = (~neg_mask).sum(-1).clamp(min=1)
    else:
        count = max(neg_score.shape[-1], 1)
    return _reduce(terms.sum(-1) / count, reduction)


def softmax_from_scores(pos_score: torch.Tensor, candidates: list[tuple[torch.Tensor, torch.Tensor | None,
                                                                           torch.Tensor | None]],
                        *, temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the target against candidate sets: [(scores [M, C], logq [M, C] or [C] or None,
    exclude [M, C] bool or None), ...]; logit = s / T - logq, excluded candidates -inf."""
    parts = [pos_score[:, None] / temperature]
    for scores, logq, exclude in candidates:
        logits = scores / temperature
        if logq is not None:
            logits = logits - logq
        if exclude is not None:
            logits = logits.masked_fill(exclude, NEG_INF)
        parts.append(logits)
    logits = torch.cat(parts, dim=1)
    return _reduce(torch.logsumexp(logits, dim=1) - logits[:, 0], reduction)


def pointwise_loss(user, pos, neg, *, temperature: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy: the positive is labelled 1, every sampled negative 0 (averaged over all M*(1+N) logits)."""
    return pointwise_from_scores(*_scores(user, pos, neg), temperature=temperature)


def pairwise_loss(user, pos, neg, *, temperature: float = 1.0) -> torch.Tensor:
    """BPR: -log sigmoid((s(u, pos) - s(u, neg)) / temperature), averaged over every (positive, negative) pair.

    With cosine scores (normalized towers) a margin is at most 2, so plain BPR (temperature 1) saturates
    at a loss of log(1 + e^-2) and barely separates items; the temperature sharpens it as in the other modes.
    """
    return pairwise_from_scores(*_scores(user, pos, neg), temperature=temperature)


def listwise_loss(user, pos, neg, *, temperature: float = 1.0, neg_logq=None, in_batch: bool = False, pos_ids=None,
                  pos_logq=None, candidates=None, reduction: str = "mean") -> torch.Tensor:
    """Softmax cross-entropy of each row's positive against its candidates, logits s / temperature.

    Sampled negatives neg [M, N, D] (N may be 0); with `neg_logq` [M, N] (log expected counts, see the
    module docstring) each sampled logit is corrected, s / T - log(n q).

    In-batch negatives (`in_batch=True`): every other row's positive is also a candidate, corrected by
    `pos_logq` [M] (the log expected count of that item among the batch's positives); a candidate that is
    the same item as the row's own positive (`pos_ids` [M]) is masked, so an item is never its own
    negative. `candidates` = (vectors [C, D], ids [C], logq [C] or None, exclude [M, C] bool or None)
    replaces the batch's own positives as the in-batch set, e.g. with those of every DDP worker.
    """
    pos_score, neg_score = _scores(user, pos, neg)
    sets = [(neg_score, neg_logq, None)] if neg_score.numel() else []
    if in_batch:
        vecs, ids, logq, exclude = candidates if candidates is not None else (pos, pos_ids, pos_logq, None)
        if ids is not None and pos_ids is not None:
            same = pos_ids[:, None] == ids[None, :]
        else:  # only when the candidates are this batch's own positives: the diagonal is each row's positive
            same = torch.eye(len(user), len(vecs), dtype=torch.bool, device=user.device)
        sets.append((user @ vecs.T, None if logq is None else logq[None, :], same if exclude is None else same | exclude))
    return softmax_from_scores(pos_score, sets, temperature=temperature, reduction=reduction)


class _WindowSampledSoftmax(torch.autograd.Function):
    """sum over positions of weight * (-log softmax over {target} and the row's sampled negatives), in one pass
    over the [E, L, N] logits each way (see `window_sampled_softmax`)."""

    @staticmethod
    def forward(ctx, user, pos, neg, logq, weight, inv_t: float):
        neg_t = neg.transpose(1, 2)  # [E, D, N]
        if logq is None:
            logits = torch.bmm(user, neg_t).mul_(inv_t)
        else:  # s / T - log(n q): the correction is added by the product's own write
            logits = torch.baddbmm(logq[:, None, :], user, neg_t, beta=-1.0, alpha=inv_t)
        pos_s = (user * pos).sum(-1) * inv_t  # [E, L]
        top = torch.maximum(logits.amax(-1), pos_s)  # [E, L]
        e = logits.sub_(top[..., None]).exp_()  # [E, L, N], in place: exp(logit - top)
        e_pos = torch.exp(pos_s - top)
        z = e.sum(-1) + e_pos
        ctx.save_for_backward(user, pos, neg, e, e_pos, z, weight)
        ctx.inv_t = inv_t
        return ((top + torch.log(z) - pos_s) * weight).sum()

    @staticmethod
    def backward(ctx, grad):
        user, pos, neg, e, e_pos, z, weight = ctx.saved_tensors
        inv_t = ctx.inv_t
        w = grad * weight / z  # [E, L]
        g = e.mul_(w[..., None])  # d loss / d logit, in place over the saved exponentials (backward runs once)
        g_pos = (e_pos * w - grad * weight)[..., None]  # d loss / d pos_s: p_target - 1, weighted
        grad_user = torch.baddbmm(g_pos * pos, g, neg, beta=inv_t, alpha=inv_t)
        grad_neg = torch.bmm(g.transpose(1, 2), user).mul_(inv_t)
        return grad_user, g_pos * user * inv_t, grad_neg, None, None, None


def window_sampled_softmax(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, neg_logq: torch.Tensor | None,
                           weight: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """The list-wise sampled softmax of rows whose positions share one draw of negatives, fused.

    user, pos [E, L, D] (the state and target item at each position of a row), neg [E, N, D] (the row's
    negatives), neg_logq [E, N] or None (their correction, log n q), weight [E, L] (0 for a position not
    scored) -> sum over positions of weight * (logsumexp(pos/T, neg/T - logq) - pos/T). Equals
    `softmax_from_scores` on the scored positions (the weights 1/M give its mean) without gathering them:
    one [E, L, N] tensor is written by the product, exponentiated in place and kept for backward, where
    the gather, correction, concatenation and log-softmax of the generic path each pass over it.
    A position with weight 0 must have finite inputs (its gradient is 0).
    """
    return _WindowSampledSoftmax.apply(user, pos, neg, neg_logq, weight, 1.0 / temperature)


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """-log softmax(user @ items^T / T)[target], exactly, visiting the items in chunks in both passes.

    Forward keeps one logsumexp per row; backward recomputes each chunk's probabilities (or, when the
    catalog fits in one chunk, reuses forward's). Extra memory is at most 2 x rows x chunk floats (one
    chunk's logits and probabilities), whatever the catalog size.
    """

    @staticmethod
    def forward(ctx, user, items, targets, inv_t: float, chunk: int):
        pos = (user * items[targets - 1]).sum(-1) * inv_t
        if chunk >= items.shape[0]:  # one chunk: keep its probabilities for backward instead of recomputing them
            logits = user @ items.T * inv_t
            lse = torch.logsumexp(logits, dim=1)
            ctx.probs = torch.exp(logits - lse[:, None])
        else:
            lse = user.new_full((user.shape[0],), NEG_INF)
            for s in range(0, items.shape[0], chunk):
                lse = torch.logaddexp(lse, torch.logsumexp(user @ items[s:s + chunk].T * inv_t, dim=1))
            ctx.probs = None
        ctx.save_for_backward(user, items, targets, lse)
        ctx.inv_t, ctx.chunk = inv_t, chunk
        return lse - pos  # [M]

    @staticmethod
    def backward(ctx, grad_out):
        user, items, targets, lse = ctx.saved_tensors
        inv_t, chunk = ctx.inv_t, ctx.chunk
        g = grad_out[:, None] * inv_t  # [M, 1]
        grad_user = torch.zeros_like(user)
        grad_items = torch.zeros_like(items)
        for s in range(0, items.shape[0], chunk):
            part = items[s:s + chunk]
            p = ctx.probs if ctx.probs is not None else torch.exp(user @ part.T * inv_t - lse[:, None])
            p = p * g  # [M, c]: d loss / d logit_j, times 1/T
            grad_user += p @ part
            grad_items[s:s + chunk] = p.T @ user
        grad_user -= items[targets - 1] * g
        grad_items.index_add_(0, targets - 1, -user * g)
        return grad_user, grad_items, None, None, None


def full_softmax_loss(user: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                      max_logits: int = 1 << 22, reduction: str = "mean") -> torch.Tensor:
    """Exact softmax cross-entropy over the whole catalog: user [M, D], items [N, D] (row j = dense item j + 1),
    targets [M] dense ids in 1..N.

    Computed in chunks of items, so that at most `max_logits` logits (16 MiB of float32 by default) exist at a
    time besides the inputs: the memory is bounded by max_logits, not by M x N.
    """
    chunk = max(1, min(items.shape[0], max_logits // max(user.shape[0], 1)))
    per_row = _ChunkedSoftmaxCE.apply(user, items, targets, 1.0 / temperature, chunk)
    return _reduce(per_row, reduction)


_LOSSES = {"pointwise": pointwise_loss, "pairwise": pairwise_loss, "listwise": listwise_loss}


def get_objective(mode):
    """Objective function by name (pointwise | pairwise | listwise) or seed alias (0 | 1 | 2)."""
    return _LOSSES[resolve_mode(mode)]
