"""Training objectives: functions of embeddings, never of models.

Shapes: user [B, D], pos [B, D], neg [B, N, D]. Scores are inner products
(cosine when the towers normalize their outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ray_recall.config import resolve_mode


def _scores(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos_score = (user * pos).sum(-1)  # [B]
    neg_score = torch.einsum("bd,bnd->bn", user, neg)  # [B, N]
    return pos_score, neg_score


def pointwise_loss(user, pos, neg, *, temperature: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy: the positive is labelled 1, every sampled negative 0 (averaged over all B*(1+N) logits)."""
    pos_score, neg_score = _scores(user, pos, neg)
    logits = torch.cat([pos_score[:, None], neg_score], dim=1) / temperature  # [B, 1+N]
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def pairwise_loss(user, pos, neg, *, temperature: float = 1.0) -> torch.Tensor:
    """BPR: -log sigmoid((s(u, pos) - s(u, neg)) / temperature), averaged over every (positive, negative) pair.

    With cosine scores (normalized towers) a margin is at most 2, so plain BPR (temperature 1) saturates
    at a loss of log(1 + e^-2) and barely separates items; the temperature sharpens it as in the other modes.
    """
    pos_score, neg_score = _scores(user, pos, neg)
    return -F.logsigmoid((pos_score[:, None] - neg_score) / temperature).mean()


def listwise_loss(user, pos, neg, *, temperature: float = 1.0, in_batch: bool = False, pos_ids=None,
                  pos_logq=None, neg_logq=None) -> torch.Tensor:
    """Softmax cross-entropy over [positive, negatives] / temperature.

    Sampled negatives: logits [s(u,pos), s(u,neg_1..N)]. With `neg_logq` the
    sampled logits are logQ-corrected (s - log q) so the softmax estimates the
    full one without the sampler's popularity bias.

    In-batch negatives (`in_batch=True`): every other row's positive is also a
    negative, corrected by its log sampling probability `pos_logq` [B] (items
    enter the batch in proportion to their frequency); rows whose positive is
    the same item as this row's (`pos_ids` [B]) are masked, so an item is never
    its own negative. Sampled negatives may be absent (N = 0) or mixed in.
    """
    pos_score, neg_score = _scores(user, pos, neg)
    if neg_logq is not None and neg_score.numel():
        neg_score = neg_score - neg_logq
    parts = [pos_score[:, None], neg_score]
    if in_batch:
        batch_scores = user @ pos.T  # [B, B]; the diagonal is each row's own positive
        if pos_logq is not None:
            batch_scores = batch_scores - pos_logq[None, :]
        same = pos_ids[:, None] == pos_ids[None, :] if pos_ids is not None else torch.eye(len(pos), dtype=torch.bool, device=pos.device)
        batch_scores = batch_scores.masked_fill(same, float("-inf"))  # the diagonal too: it is the positive column
        parts.append(batch_scores)
    logits = torch.cat(parts, dim=1) / temperature
    target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


_LOSSES = {"pointwise": pointwise_loss, "pairwise": pairwise_loss, "listwise": listwise_loss}


def get_objective(mode):
    """Objective function by name (pointwise | pairwise | listwise) or seed alias (0 | 1 | 2)."""
    return _LOSSES[resolve_mode(mode)]
