"""Exact full ranking of held-out targets: shared by in-training validation and the evaluation job."""

from __future__ import annotations

import numpy as np
import torch

from ray_recall import batch as B
from ray_recall.batch import SequenceTable, user_batch
from ray_recall.metrics import score_items, target_ranks


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_all_items(model, batch_size: int = 8192) -> torch.Tensor:
    """[num_items, D]: row j is dense item j + 1 (no gradients; in the model's current mode)."""
    ids = model.all_item_ids(device=_device(model))
    out = None  # filled in place: no list of blocks beside the result (at a million items, 256 MB each)
    for i in range(0, len(ids), batch_size):
        vecs = model.encode_item({B.ITEM: ids[i:i + batch_size]})
        if out is None:
            out = vecs.new_empty((len(ids), *vecs.shape[1:]))
        out[i:i + len(vecs)] = vecs
    return out


# Scores computed at a time when ranking (users x items of one block): bounds the memory whatever the catalog.
MAX_SCORES = 1 << 22


@torch.no_grad()
def rank_targets(model, seqs: SequenceTable, item_vecs: torch.Tensor, users: np.ndarray, pos: np.ndarray,
                 targets: np.ndarray, max_len: int, mask_seen: bool = True, batch_size: int = 512,
                 extra_scores: dict | None = None, user_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """0-based rank of each target among all items, users' history = their items before `pos`.

    `users` index `seqs`; `user_ids` (default: `users`) are the dense ids the model sees. `extra_scores` maps a
    name to a fixed score vector [num_items] (e.g. popularity) ranked under the same masking; returns
    {"model": ranks, name: ranks, ...}. Items are scored in blocks of at most MAX_SCORES scores.
    """
    user_ids = users if user_ids is None else user_ids
    out: dict[str, list] = {"model": [], **{k: [] for k in (extra_scores or {})}}
    orders = {name: score_order(vec) for name, vec in (extra_scores or {}).items()}
    for i in range(0, len(users), batch_size):
        u, p, t = users[i:i + batch_size], pos[i:i + batch_size], torch.tensor(targets[i:i + batch_size])
        seen = seqs.seen_before(u, p) if mask_seen else (None, None)
        batch = user_batch(seqs, u, p, max_len, user_ids[i:i + batch_size])
        vecs = model.encode_user({k: v.to(item_vecs.device) for k, v in batch.items()})
        out["model"].append(blocked_target_ranks(vecs, item_vecs, t, *seen).numpy())
        for name, order in orders.items():
            out[name].append(fixed_score_ranks(order, t, *seen).numpy())
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in out.items()}


def score_order(scores: torch.Tensor) -> torch.Tensor:
    """A fixed score per item [N] -> each item's 0-based place in the ranking (higher score first, ties by id)."""
    n = len(scores)
    # Stable sort of -score keeps the lower id first among equal scores.
    order = torch.sort(-scores.to(torch.float64), stable=True).indices
    place = torch.empty(n, dtype=torch.long)
    place[order] = torch.arange(n)
    return place


def fixed_score_ranks(place: torch.Tensor, targets: torch.Tensor, seen_rows=None, seen_items=None) -> torch.Tensor:
    """`target_ranks` for one fixed score vector (e.g. popularity) given as `score_order`: exact, in O(seen) memory."""
    n = len(place)
    t_place = place[targets.long() - 1]
    ranks = t_place.clone()
    if seen_rows is not None and len(seen_rows):
        sr, si = torch.as_tensor(seen_rows), torch.as_tensor(seen_items) - 1
        before = place[si] < t_place[sr]
        key = torch.unique(sr[before] * (n + 1) + si[before])  # each seen item once per row
        ranks -= torch.bincount(key // (n + 1), minlength=len(targets))
        target_seen = torch.zeros(len(targets), dtype=torch.bool)
        target_seen[sr[si == targets.long()[sr] - 1]] = True
        ranks = torch.where(target_seen, torch.full_like(ranks, n), ranks)
    return ranks


def pair_scores(user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
    """Row-wise scores: user_vecs [P, D] or [P, K, D] (best interest), item_vecs [P, D] -> [P]."""
    if user_vecs.dim() == 3:
        return torch.einsum("pkd,pd->pk", user_vecs, item_vecs).amax(1)
    return (user_vecs * item_vecs).sum(-1)


def blocked_target_ranks(user_vecs: torch.Tensor, item_vecs: torch.Tensor, targets: torch.Tensor, seen_rows=None,
                         seen_items=None, max_scores: int = MAX_SCORES) -> torch.Tensor:
    """`target_ranks(score_items(user_vecs, item_vecs), ...)`, exactly, over blocks of items.

    The catalog is scored a block at a time (rows x block <= max_scores); each block adds the items that
    beat the target. A seen item is then taken back if it beat the target, from its own score. The
    target's score comes from its own product, which may differ from a block's in the last bits, so
    scores within a relative 1e-6 of it count as ties (broken by item id, as unblocked).
    """
    n = item_vecs.shape[0]
    block = max(1, max_scores // max(len(targets), 1))
    if block >= n:
        return target_ranks(score_items(user_vecs, item_vecs).cpu(), targets, seen_rows, seen_items)
    t_col = targets.long() - 1
    t_score = pair_scores(user_vecs, item_vecs[t_col]).cpu()[:, None]  # [B, 1]
    tol = 1e-6 * t_score.abs().clamp(min=1.0)
    above = torch.zeros(len(targets), dtype=torch.long)

    hi, lo = t_score + tol, t_score - tol
    for s in range(0, n, block):
        scores = score_items(user_vecs, item_vecs[s:s + block]).cpu()  # [B, c]
        n_gt = (scores > hi).sum(1, dtype=torch.int32)  # int32 sums: half the time of bool -> int64
        n_ge = (scores >= lo).sum(1, dtype=torch.int32)
        above += n_gt
        # Ties (within tol of the target's score) are few, in few rows (the target itself is one, in its own
        # block): decided by item id in those rows only.
        rows = (n_ge > n_gt).nonzero(as_tuple=True)[0]
        if len(rows):
            sub = scores[rows]
            r, c = ((sub >= lo[rows]) & (sub <= hi[rows])).nonzero(as_tuple=True)
            ids, tr = c + s, t_col[rows][r]
            above += torch.bincount(rows[r[(ids < tr) & (ids != tr)]], minlength=len(targets))
        # The target never beats itself, even where its block score strays beyond tol (another kernel's rounding).
        own = ((t_col >= s) & (t_col < s + scores.shape[1])).nonzero(as_tuple=True)[0]
        if len(own):
            above[own] -= (scores[own, t_col[own] - s] > hi[own, 0]).long()
    if seen_rows is not None and len(seen_rows):
        sr, si = torch.as_tensor(seen_rows), torch.as_tensor(seen_items) - 1
        s_score = pair_scores(user_vecs[sr], item_vecs[si]).cpu()
        t_s, tl = t_score[sr, 0], tol[sr, 0]
        beat = ((s_score > t_s + tl) | (((s_score - t_s).abs() <= tl) & (si < t_col[sr]))) & (si != t_col[sr])
        # Each seen item once per row: a history may hold an item twice.
        key = torch.unique(sr[beat] * (n + 1) + si[beat])
        above -= torch.bincount(key // (n + 1), minlength=len(targets))
        target_seen = torch.zeros(len(targets), dtype=torch.bool)
        target_seen[sr[si == t_col[sr]]] = True
        above = torch.where(target_seen, torch.full_like(above, n), above)
    return above
