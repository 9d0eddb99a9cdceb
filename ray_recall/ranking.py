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
    return torch.cat([model.encode_item({B.ITEM: ids[i:i + batch_size]}) for i in range(0, len(ids), batch_size)])


@torch.no_grad()
def rank_targets(model, seqs: SequenceTable, item_vecs: torch.Tensor, users: np.ndarray, pos: np.ndarray,
                 targets: np.ndarray, max_len: int, mask_seen: bool = True, batch_size: int = 512,
                 extra_scores: dict | None = None) -> dict[str, np.ndarray]:
    """0-based rank of each target among all items, users' history = their items before `pos`.

    `extra_scores` maps a name to a fixed score vector [num_items] (e.g. popularity) ranked under the
    same masking; returns {"model": ranks, name: ranks, ...}.
    """
    out: dict[str, list] = {"model": [], **{k: [] for k in (extra_scores or {})}}
    for i in range(0, len(users), batch_size):
        u, p, t = users[i:i + batch_size], pos[i:i + batch_size], torch.tensor(targets[i:i + batch_size])
        seen = seqs.seen_before(u, p) if mask_seen else (None, None)
        user = {k: v.to(item_vecs.device) for k, v in user_batch(seqs, u, p, max_len).items()}
        scores = score_items(model.encode_user(user), item_vecs).cpu()
        out["model"].append(target_ranks(scores, t, *seen).numpy())
        for name, vec in (extra_scores or {}).items():
            out[name].append(target_ranks(vec[None, :].expand(len(u), -1), t, *seen).numpy())
    return {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in out.items()}
