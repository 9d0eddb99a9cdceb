"""Ranking metrics from the exact rank of each held-out target (leave-one-out: one target per user).

rank = number of unmasked items scored above the target, ties broken by
dense item id (lower first, as a stable top-K would). With one target per
user Recall@K equals HitRate@K; both are reported because they differ once a
user has several held-out items.
"""

from __future__ import annotations

import numpy as np
import torch


def score_items(user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
    """user_vecs [B, D] or [B, K, D] (one per interest), item_vecs [N, D] -> scores [B, N] (best interest per item)."""
    if user_vecs.dim() == 3:
        return torch.einsum("bkd,nd->bkn", user_vecs, item_vecs).amax(dim=1)
    return user_vecs @ item_vecs.T


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, seen_rows=None, seen_items=None) -> torch.Tensor:
    """scores [B, N] over dense items 1..N (column j = item j + 1), targets [B] dense ids -> ranks [B] (0 = top).

    (seen_rows, seen_items): pairs of (row, dense item) to mask (previously seen items).
    """
    scores = scores.clone()
    if seen_rows is not None and len(seen_rows):
        scores[torch.as_tensor(seen_rows), torch.as_tensor(seen_items) - 1] = float("-inf")
    rows = torch.arange(len(targets))
    t_col = targets.long() - 1
    t_score = scores[rows, t_col][:, None]
    ids = torch.arange(scores.shape[1])[None, :]
    above = (scores > t_score) | ((scores == t_score) & (ids < t_col[:, None]))
    ranks = above.sum(dim=1)
    # A masked target (seen before, e.g. a repeat) can never be retrieved: rank it last.
    return torch.where(torch.isinf(t_score[:, 0]) & (t_score[:, 0] < 0), torch.full_like(ranks, scores.shape[1]), ranks)


def metrics_from_ranks(ranks: np.ndarray, ks) -> dict[str, float]:
    """Recall@K, HitRate@K, NDCG@K, MRR@K averaged over users, from 0-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"hit_rate@{k}"] = out[f"recall@{k}"]
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()) if len(ranks) else 0.0
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()) if len(ranks) else 0.0
    return out


def standard_errors(ranks: np.ndarray, ks) -> dict[str, float]:
    """The standard error of each metric of `metrics_from_ranks` (std of the per-user values / sqrt(users))."""
    ranks = np.asarray(ranks, dtype=np.float64)
    n = max(len(ranks), 1)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        for name, per_user in (("recall", hit.astype(np.float64)),
                               ("ndcg", np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)),
                               ("mrr", np.where(hit, 1.0 / (ranks + 1.0), 0.0))):
            out[f"{name}@{k}"] = float(per_user.std(ddof=1) / np.sqrt(n)) if len(ranks) > 1 else 0.0
        out[f"hit_rate@{k}"] = out[f"recall@{k}"]
    return out


def format_table(rows: dict[str, dict[str, float]], ks) -> str:
    """A plain-text table: one row per method, one column per metric@K."""
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "mrr")]
    head = f"{'method':<22}" + "".join(f"{n:>12}" for n in names)
    lines = [head, "-" * len(head)]
    for method, vals in rows.items():
        lines.append(f"{method:<22}" + "".join(f"{vals[n]:>12.4f}" for n in names))
    return "\n".join(lines)
