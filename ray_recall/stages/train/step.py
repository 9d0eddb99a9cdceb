"""One training step's loss: the model's two towers on a batch, scored by the configured objective.

Per-prefix and all-position batches go through the same code: a per-prefix batch is the case of one
target per row. Which loss (see ray_recall.objectives):

    pointwise / pairwise     BCE / BPR against each row's sampled negatives
    listwise, sampled        softmax against each row's sampled negatives (or, with train.shared_negatives,
                             the batch's one draw, a row's own items masked), logQ-corrected, plus, with
                             train.in_batch_negatives, every other target of the batch (of every worker's
                             batch when train.gather_negatives), corrected by the mixture of both sources
    listwise, full           the exact softmax over the whole catalog, in chunks

logQ: a candidate j drawn n times from the negative sampler q_s and standing among C in-batch targets
(which follow the data's item frequency q_d) is expected n q_s(j) + C q_d(j) times; its logit is
lowered by the log of that (train.logq_correction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ray_recall import batch as B
from ray_recall.config import TrainConfig
from ray_recall.objectives import (full_softmax_loss, pairwise_from_scores, pointwise_from_scores, softmax_from_scores,
                                   window_sampled_softmax)


@dataclass
class ItemTables:
    """Item-side tables the loss needs (the only global state a worker holds besides the model)."""

    sampler_prob: torch.Tensor  # [num_items + 1] probability of each item under the negative sampler
    data_prob: torch.Tensor  # [num_items + 1] each item's share of the training targets

    @classmethod
    def build(cls, sampler_probs: np.ndarray, train_counts: np.ndarray, device=None) -> "ItemTables":
        counts = np.asarray(train_counts, dtype=np.float64)
        return cls(torch.as_tensor(sampler_probs, dtype=torch.float32, device=device),
                   torch.as_tensor(counts / max(counts.sum(), 1.0), dtype=torch.float32, device=device))

    def to(self, device) -> "ItemTables":
        return ItemTables(self.sampler_prob.to(device), self.data_prob.to(device))

    def log_expected(self, ids: torch.Tensor, sampled: int, in_batch: int) -> torch.Tensor:
        """log(sampled q_s(j) + in_batch q_d(j)) for item ids of any shape (a source that contributes nothing is not
        looked up)."""
        expected = sampled * self.sampler_prob[ids] if sampled else torch.zeros(ids.shape, device=ids.device)
        if in_batch:
            expected = expected + in_batch * self.data_prob[ids]
        return torch.log(expected.clamp(min=1e-30))


def batch_loss(model, batch: dict[str, torch.Tensor], tc: TrainConfig, tables: ItemTables,
               gather=None) -> tuple[torch.Tensor, int]:
    """(loss, targets scored) for one batch; `model` may be DDP-wrapped (its forward runs both towers).

    `gather`: a function concatenating a tensor's rows over every DDP worker, differentiably
    (stages/train/comm.py), for in-batch negatives across workers; None = this batch's own targets only.
    """
    full = tc.mode == "listwise" and tc.softmax == "full"
    device_type = batch[B.HIST].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
        out = model(batch, all_items=full)
    user, pos, neg = out["user"].float(), out["pos"].float(), out["neg"].float()  # the loss in fp32 either way
    targets = batch[B.POS] if batch[B.POS].dim() == 2 else batch[B.POS][:, None]  # [E, T]
    valid = targets > 0
    T = tc.temperature
    if tc.mode == "listwise" and not full and B.NEG_SEEN not in batch and not tc.in_batch_negatives and neg.shape[1]:
        # Each row's own draw and no other candidates: the fused loss over [E, T, N], no gather of the scored
        # positions (the same value as below). Unscored positions are zeroed: an encoder's padding states may be anything.
        count = int(valid.sum())
        logq = tables.log_expected(batch[B.NEG], neg.shape[1], 0) if tc.logq_correction else None
        loss = window_sampled_softmax(user.masked_fill(~valid[..., None], 0.0), pos, neg, logq,
                                      valid.to(user.dtype) / max(count, 1), temperature=T)
        if tc.embedding_l2 > 0:
            loss = loss + tc.embedding_l2 * (user[valid].pow(2).sum() + pos[valid].pow(2).sum()
                                             + neg.pow(2).sum()) / max(count, 1)
        return loss, count
    u, p, tgt = user[valid], pos[valid], targets[valid]  # [M, D], [M, D], [M]
    rows = torch.arange(len(targets), device=targets.device)[:, None].expand_as(targets)[valid]  # [M]
    if full:
        loss = full_softmax_loss(u, out["items"].float(), tgt, temperature=T)
    else:
        pos_s = (u * p).sum(-1)
        shared = B.NEG_SEEN in batch  # one draw [1, N] for the whole batch; a row's own items masked
        if shared:
            neg_ids, neg_s = batch[B.NEG][0], u @ neg[0].T  # [N], [M, N]: the scored positions only
        else:
            neg_ids = batch[B.NEG]  # [E, N]: a row's draw, shared by its positions (its logQ is looked up per row)
            neg_s = (user @ neg.transpose(1, 2))[valid] if neg.shape[1] else u.new_zeros(len(u), 0)  # [M, N]
        if tc.mode == "pointwise":
            loss = pointwise_from_scores(pos_s, neg_s, temperature=T)
        elif tc.mode == "pairwise":
            loss = pairwise_from_scores(pos_s, neg_s, temperature=T)
        else:
            seen = batch[B.NEG_SEEN][rows] if shared else None
            loss = softmax_from_scores(pos_s, _candidates(u, p, tgt, batch[B.USER][rows], rows, neg_s, neg_ids, seen,
                                                          tc, tables, gather), temperature=T)
    if tc.embedding_l2 > 0:
        loss = loss + tc.embedding_l2 * (u.pow(2).sum() + p.pow(2).sum() + neg.pow(2).sum()) / max(len(u), 1)
    return loss, int(valid.sum())


def _candidates(u, p, tgt, users, rows, neg_s, neg_ids, seen, tc: TrainConfig, tables: ItemTables, gather) -> list:
    """The list-wise candidate sets: (scores [M, C], logq, exclude) for the sampled and the in-batch negatives.

    neg_ids: [E, N] (each example's own draw; `rows` [M] the example of each scored position) or [N] (shared by
    the batch, `seen` [M, N] masking a row's own items). The correction is computed per draw, then spread to
    the positions: a window's 50 positions share one.
    """
    n = neg_s.shape[1]
    in_p, in_ids, in_users = p, tgt, users
    if tc.in_batch_negatives and gather is not None:
        in_p, in_ids, in_users = gather(p), gather(tgt), gather(users)
    c = len(in_ids) if tc.in_batch_negatives else 0
    sets = []
    if n:
        logq = None
        if tc.logq_correction:
            logq = tables.log_expected(neg_ids, n, c)
            logq = logq[rows] if neg_ids.dim() == 2 else logq  # [M, N], or [N] for the shared draw
        sets.append((neg_s, logq, seen))
    if tc.in_batch_negatives:
        # Never a row's own target, nor another target of the same user (one of its own positives).
        exclude = (tgt[:, None] == in_ids[None, :]) | (users[:, None] == in_users[None, :])
        logq = tables.log_expected(in_ids, n, c)[None, :] if tc.logq_correction else None
        sets.append((u @ in_p.T, logq, exclude))
    return sets
