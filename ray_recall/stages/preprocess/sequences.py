"""Per-user sequences, leave-last-out splits and history windows: plain functions of one batch.

Order within a user: by timestamp; interactions with the same timestamp are
ordered by a fixed hash of (user, item) (`tie_break_key`). The order is
deterministic and independent of how the log was sharded or read, and unlike
ordering ties by item id it does not push high ids (often the newest, least
popular items) to the end of every sequence, where they would become the
held-out targets.

Split (leave-last-out), for a user with n >= 3 items s[0..n-1]:
  test       target s[n-1], history s[:n-1]
  validation target s[n-2], history s[:n-2]
  train      targets s[1..n-3], history s[:pos]  (stored as (user, pos), cut at batch time)
The "train part" of a user is s[:n-2]: what training, popularity and the
negative sampler may know.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ray_recall.batch import positions_within, train_part
from ray_recall.errors import DataError

# times: each item's timestamp (float64 seconds), in the same order.
# duplicates: rows repeating one of this user's (item, timestamp) pairs, dropped from `items`.
SEQ_SCHEMA = pa.schema([("user_idx", pa.int64()), ("items", pa.list_(pa.int32())), ("times", pa.list_(pa.float64())),
                        ("length", pa.int32()), ("duplicates", pa.int32())])
SAMPLE_SCHEMA = pa.schema([("user_idx", pa.int64()), ("pos", pa.int32()), ("target", pa.int32())])


def tie_break_key(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random uint64 per (user, item) pair (splitmix64 finalizer)."""
    x = users.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + items.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def build_sequences(batch: pa.Table, min_len: int = 3, duplicates: str = "drop", source: str = "",
                    user_vocab: np.ndarray | None = None, item_vocab: np.ndarray | None = None) -> pa.Table:
    """(user_idx, item_idx, timestamp) rows, all rows of each user in this batch -> one row per user (SEQ_SCHEMA).

    Rows repeating a (user, item, timestamp) are duplicates: with duplicates="drop" all but one are
    dropped and counted in the user's `duplicates` column; with "error" the first one found raises
    DataError naming `source` and the row (original ids when the vocabularies are given).
    Users with fewer than `min_len` interactions (after dropping duplicates) are dropped.
    """
    u = batch.column("user_idx").to_numpy()
    i = batch.column("item_idx").to_numpy()
    t = batch.column("timestamp").to_numpy()
    # The item id as the last key makes duplicates adjacent even if two items' tie keys collide.
    order = np.lexsort((i, tie_break_key(u, i), t, u))
    u, i, t = u[order], i[order].astype(np.int32), t[order]
    if len(u) == 0:
        return SEQ_SCHEMA.empty_table()
    dup = np.concatenate([[False], (u[1:] == u[:-1]) & (i[1:] == i[:-1]) & (t[1:] == t[:-1])])
    if dup.any():
        if duplicates == "error":
            k = int(np.flatnonzero(dup)[0])
            raise DataError(f"{source}: duplicate rows (same user, item and timestamp), e.g. "
                            f"{_describe_row(u[k], i[k], t[k], user_vocab, item_vocab)}; "
                            "set data.duplicates=drop to keep one of each")
        dup_users = u[dup]
        u, i, t = u[~dup], i[~dup], t[~dup]
    else:
        dup_users = u[:0]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(u)) + 1])
    lengths = np.diff(np.concatenate([starts, [len(u)]]))
    keep = lengths >= min_len
    starts, lengths = starts[keep], lengths[keep]
    # Gather the kept users' items into one flat array with fresh offsets.
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat_idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    items = pa.ListArray.from_arrays(pa.array(offsets), pa.array(i[flat_idx], pa.int32()))
    times = pa.ListArray.from_arrays(pa.array(offsets), pa.array(t[flat_idx].astype(np.float64), pa.float64()))
    kept_users = u[starts]
    dup_count = np.zeros(len(kept_users), dtype=np.int32)
    if len(dup_users):
        at = np.searchsorted(kept_users, dup_users)  # users are sorted; a dropped user matches no kept row
        hit = (at < len(kept_users)) & (kept_users[np.minimum(at, len(kept_users) - 1)] == dup_users)
        np.add.at(dup_count, at[hit], 1)
    return pa.table({"user_idx": pa.array(kept_users, pa.int64()), "items": items, "times": times,
                     "length": pa.array(lengths.astype(np.int32)), "duplicates": pa.array(dup_count)}, schema=SEQ_SCHEMA)


def _describe_row(user: int, item: int, ts: float, user_vocab, item_vocab) -> str:
    def raw(vocab, dense):
        if vocab is None:
            return f"#{dense} (dense id)"
        value = vocab[int(dense) - 1]
        return repr(value.item() if isinstance(value, np.generic) else value)

    ts_text = str(int(ts)) if float(ts).is_integer() else repr(float(ts))
    return f"user {raw(user_vocab, user)}, item {raw(item_vocab, item)}, timestamp {ts_text}"


def split_samples(batch: pa.Table, split: str) -> pa.Table:
    """Sequences (SEQ_SCHEMA) -> samples (user_idx, pos, target) of one split: 'train', 'val' or 'test'."""
    users = batch.column("user_idx").to_numpy()
    lengths = batch.column("length").to_numpy().astype(np.int64)
    flat = batch.column("items").combine_chunks().flatten().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if split in ("val", "test"):
        pos = lengths - (2 if split == "val" else 1)
        return pa.table({"user_idx": pa.array(users, pa.int64()), "pos": pa.array(pos.astype(np.int32)),
                         "target": pa.array(flat[offsets[:-1] + pos].astype(np.int32))}, schema=SAMPLE_SCHEMA)
    if split != "train":
        raise ValueError(f"split must be train, val or test, got {split!r}")
    counts = np.maximum(lengths - 3, 0)  # positions 1..n-3
    rows = np.repeat(np.arange(len(users)), counts)
    pos = positions_within(counts) + 1
    return pa.table({"user_idx": pa.array(users[rows], pa.int64()), "pos": pa.array(pos.astype(np.int32)),
                     "target": pa.array(flat[offsets[rows] + pos].astype(np.int32))}, schema=SAMPLE_SCHEMA)


def train_part_item_counts(items: pa.Array | pa.ChunkedArray, size: int) -> np.ndarray:
    """A column of sequences (list<int32>) -> [size] interaction counts per item in their train parts, s[:n-2]."""
    col = items.combine_chunks() if isinstance(items, pa.ChunkedArray) else items
    _, idx = train_part(col.offsets.to_numpy())
    return np.bincount(col.values.to_numpy()[idx], minlength=size)
