"""A seeded synthetic interaction log with planted structure.

Users belong to latent taste groups; every item belongs to one group. An
interaction comes from the user's own group with probability
`group_affinity`, otherwise from the whole catalogue; within either, item
popularity follows a power law (Zipf). So a model that infers a user's group
from their history (or from the `taste` attribute, a noisy hint of it) beats
the most-popular baseline, and popularity itself is a real signal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ray_recall.config import SyntheticConfig


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return np.cumsum(w) / w.sum()


class _Catalogue:
    """The items' side of the generator: popularity order and groups, drawn from the seed alone."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        I = cfg.num_items
        self.num_groups = G = min(cfg.num_groups, I)
        # A random permutation decides popularity ranks; item i belongs to group i % G.
        item_rank = rng.permutation(I)  # rank of item i in the global popularity order
        self.item_group = np.arange(I) % G
        self.global_order = np.argsort(item_rank)  # items from most to least popular
        self.global_cdf = _zipf_cdf(I, cfg.zipf_exponent)
        self.group_items = [self.global_order[self.item_group[self.global_order] == g] for g in range(G)]
        self.group_cdfs = [_zipf_cdf(len(it), cfg.zipf_exponent) for it in self.group_items]


def _interactions(cfg: SyntheticConfig, cat: _Catalogue, user_group: np.ndarray, first_user: int,
                  rng: np.random.Generator) -> pd.DataFrame:
    """user_id, item_id, timestamp of the users first_user .. first_user + len(user_group) - 1."""
    U, I = len(user_group), cfg.num_items
    # Lengths: 5 + geometric, so every user survives leave-last-out with room for training.
    extra = max(cfg.mean_length - 5.0, 1.0)
    lengths = 5 + rng.geometric(1.0 / extra, size=U) - 1
    lengths = np.minimum(lengths, max(5, I // 2))

    # Draw more than needed, drop repeats per user, keep the first `length`.
    draw = (lengths * 1.5 + 5).astype(np.int64)
    users = np.repeat(np.arange(U), draw)
    from_group = rng.random(len(users)) < cfg.group_affinity
    items = cat.global_order[np.minimum(np.searchsorted(cat.global_cdf, rng.random(len(users))), I - 1)]
    ug = user_group[users]
    for g in range(cat.num_groups):
        sel = from_group & (ug == g)
        pick = np.minimum(np.searchsorted(cat.group_cdfs[g], rng.random(sel.sum())), len(cat.group_items[g]) - 1)
        items[sel] = cat.group_items[g][pick]
    df = pd.DataFrame({"u": users, "i": items}).drop_duplicates(["u", "i"])
    df["n"] = df.groupby("u").cumcount()
    df = df[df["n"] < lengths[df["u"].to_numpy()]]

    # Timestamps: each user starts somewhere in a year, then gaps of ~1 hour; some gaps are 0 (ties).
    start = rng.integers(1_600_000_000, 1_631_536_000, size=U)
    gaps = rng.exponential(3600.0, size=len(df)).astype(np.int64)
    gaps[rng.random(len(df)) < 0.05] = 0
    gaps[df["n"].to_numpy() == 0] = 0
    ts = start[df["u"].to_numpy()] + pd.Series(gaps).groupby(df["u"].to_numpy()).cumsum().to_numpy()
    return pd.DataFrame({
        "user_id": df["u"].to_numpy() + first_user + 1001,
        "item_id": df["i"].to_numpy() + 5001,
        "timestamp": ts.astype(np.int64),
    })


def _attributes(cfg: SyntheticConfig, cat: _Catalogue, user_group: np.ndarray,
                rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    U, I, G = cfg.num_users, cfg.num_items, cat.num_groups
    # A noisy hint of the taste group, right 70% of the time.
    noisy = np.where(rng.random(U) < 0.7, user_group, rng.integers(0, G, size=U))
    users_df = pd.DataFrame({"user_id": np.arange(U) + 1001, "taste": [f"t{g}" for g in noisy]})
    items_df = pd.DataFrame({
        "item_id": np.arange(I) + 5001,
        "category": [f"c{g}" for g in cat.item_group],
        "title": [f"item {i + 5001} (group {g})" for i, g in enumerate(cat.item_group)],
    })
    return users_df, items_df


def generate(cfg: SyntheticConfig | None = None, **overrides) -> dict[str, pd.DataFrame]:
    """Return {"interactions": user_id, item_id, timestamp; "users": user_id, taste; "items": item_id, category, title}.

    Ids are the original (raw) ids, starting at 1001 for users and 5001 for
    items so tests notice any confusion between raw and dense ids.
    """
    cfg = cfg or SyntheticConfig(**overrides)
    if overrides and cfg is not None and not isinstance(cfg, SyntheticConfig):
        raise TypeError("pass a SyntheticConfig or keyword overrides")
    rng = np.random.default_rng(cfg.seed)
    cat = _Catalogue(cfg, rng)
    user_group = rng.integers(0, cat.num_groups, size=cfg.num_users)
    interactions = _interactions(cfg, cat, user_group, 0, rng)
    users_df, items_df = _attributes(cfg, cat, user_group, rng)
    return {"interactions": interactions.reset_index(drop=True), "users": users_df, "items": items_df}


def write_sharded(out_dir: str, cfg: SyntheticConfig, users_per_file: int = 100_000) -> dict[str, str]:
    """A log too large to build in memory: interactions as one parquet file per `users_per_file` users.

    Writes out_dir/interactions/part-NNNNN.parquet, out_dir/users.parquet and out_dir/items.parquet
    and returns their paths (the interactions directory for "interactions"). The items table and the
    users' (hidden) taste groups are those of `generate(cfg)`; each file's interactions come from a
    stream seeded by (seed, file number), so the log is the same for the same config and file size,
    but neither its rows nor the users' noisy taste hints are `generate`'s. Memory is bounded by one
    file's users.
    """
    import os

    rng = np.random.default_rng(cfg.seed)
    cat = _Catalogue(cfg, rng)
    user_group = rng.integers(0, cat.num_groups, size=cfg.num_users)
    inter_dir = os.path.join(out_dir, "interactions")
    os.makedirs(inter_dir, exist_ok=True)
    for n, lo in enumerate(range(0, cfg.num_users, users_per_file)):
        part = _interactions(cfg, cat, user_group[lo:lo + users_per_file], lo, np.random.default_rng([cfg.seed, n]))
        part.to_parquet(os.path.join(inter_dir, f"part-{n:05d}.parquet"), index=False)
    users_df, items_df = _attributes(cfg, cat, user_group, rng)
    paths = {"interactions": inter_dir, "users": os.path.join(out_dir, "users.parquet"),
             "items": os.path.join(out_dir, "items.parquet")}
    users_df.to_parquet(paths["users"], index=False)
    items_df.to_parquet(paths["items"], index=False)
    return paths


def write_tables(out_dir: str, cfg: SyntheticConfig | None = None, fmt: str = "parquet", **overrides) -> dict[str, str]:
    """Generate and write the three tables as parquet or csv files in `out_dir`; returns their paths."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, frame in generate(cfg, **overrides).items():
        path = os.path.join(out_dir, f"{name}.{fmt}")
        frame.to_parquet(path, index=False) if fmt == "parquet" else frame.to_csv(path, index=False)
        paths[name] = path
    return paths
