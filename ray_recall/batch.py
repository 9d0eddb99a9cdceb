"""The batch contract every model, objective and data transform agrees on, and the one place histories are cut.

A training batch is a dict of tensors (numpy arrays before collation):

    USER       [B]      int64    dense user id (0 = unknown user)
    HIST       [B, L]   int64    item history, oldest first, right-padded with 0
    HIST_LEN   [B]      int64    number of real items in HIST (the rest is padding)
    HIST_TIME  [B, L]   float64  timestamp (seconds) of each HIST item, 0 at padding; optional (HSTU's time bias)
    POS        [B]      int64    per-prefix training: the target (positive) item after the whole history
               [B, L]   int64    all-position training: POS[b, t] is the item after HIST[b, :t+1] (0 = no target)
    NEG        [B, N]   int64    sampled negative items of each row (never one of the user's positives); an
                                 all-position row's negatives serve every one of its positions
               [1, N]   int64    with shared negatives (train.shared_negatives): one draw for the whole batch
    NEG_SEEN   [B, N]   bool     with shared negatives: True where NEG is one of the row's user's own items
                                 (masked in the loss instead of redrawn)

Packed all-position rows (train.pack, models with `packable`) hold several windows one after the other:

    HIST_SEG   [B, L]   int64    the window each position belongs to (-1 at padding): a position attends
                                 only to earlier positions of its own window
    HIST_POS   [B, L]   int64    each position's index within its window (its position embedding)
    HIST_USER  [B, L]   int64    the user each position's window belongs to (0 at padding); USER [B] is one of them

Their NEG rows are never one of the positives of any user whose window the row holds.

An item batch is {ITEM: int64 tensor of any shape}.

`SequenceTable` holds every user's time-ordered items (the run directory's data/sequences as CSR
arrays); `user_batch` cuts the user side of a batch from it, and `pad_histories` builds one from
ad-hoc histories. Training, evaluation, embedding and serving all build their user inputs here.
"""

from __future__ import annotations

import numpy as np

USER = "user_id"
HIST = "hist"
HIST_LEN = "hist_len"
HIST_TIME = "hist_time"
POS = "pos_item"
NEG = "neg_items"
NEG_SEEN = "neg_seen"
NEG_POOL = "neg_pool"  # a built chunk's shared negatives, one row per batch [ceil(B / batch size), N]
HIST_SEG = "hist_seg"
HIST_POS = "hist_pos"
HIST_USER = "hist_user"
BATCH_END = "batch_end"  # a packed chunk's batch boundaries: batch i is rows [BATCH_END[i - 1], BATCH_END[i])
ITEM = "item_id"


def positions_within(counts: np.ndarray) -> np.ndarray:
    """[n] run lengths -> 0, 1, .., c-1 for each run c, concatenated."""
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def train_part(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR offsets [n+1] of n sequences -> (row, index into the flat items) of every train-part item, s[:len-2].

    The train part of a sequence is everything but its validation and test items: what training, the
    samplers' popularity and the rejection of a user's own positives may know.
    """
    keep = np.maximum(np.diff(offsets) - 2, 0)
    return np.repeat(np.arange(len(keep)), keep), np.repeat(offsets[:-1], keep) + positions_within(keep)


class SequenceTable:
    """All users' sequences as CSR arrays (linear in the log), for cutting history windows at batch time."""

    def __init__(self, offsets: np.ndarray, items: np.ndarray, times: np.ndarray | None = None):
        self.offsets = offsets  # [num_users + 2] int64; user u's items are items[offsets[u]:offsets[u+1]]
        self.items = items  # [num_interactions] int32
        self.times = times  # [num_interactions] float64 seconds, or None

    @classmethod
    def from_arrow(cls, table, num_users: int) -> "SequenceTable":
        """A pyarrow table of sequence rows (user_idx, items: list<int32>, length[, times]), in any user order."""
        users = table.column("user_idx").to_numpy()
        row_len = table.column("length").to_numpy().astype(np.int64)
        lengths_by_user = np.zeros(num_users + 1, dtype=np.int64)
        lengths_by_user[users] = row_len
        offsets = np.concatenate([[0], np.cumsum(lengths_by_user)])
        src = np.repeat(offsets[users] - (np.cumsum(row_len) - row_len), row_len) + np.arange(row_len.sum())
        items = np.zeros(offsets[-1], dtype=np.int32)
        items[src] = table.column("items").combine_chunks().flatten().to_numpy()
        times = None
        if "times" in table.column_names:
            times = np.zeros(offsets[-1], dtype=np.float64)
            times[src] = table.column("times").combine_chunks().flatten().to_numpy()
        return cls(offsets, items, times)

    @classmethod
    def of_rows(cls, table) -> "SequenceTable":
        """Sequence rows (items: list<int32>[, times]) -> a table indexed by row number 0..n-1 instead of user id."""
        items = table.column("items").combine_chunks()
        offsets = items.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        flat = items.flatten().to_numpy()
        times = table.column("times").combine_chunks().flatten().to_numpy() if "times" in table.column_names else None
        return cls(offsets, flat, times)

    def length(self, users: np.ndarray) -> np.ndarray:
        return self.offsets[users + 1] - self.offsets[users]

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]

    def windows(self, users: np.ndarray, pos: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """History before each position: the last `max_len` items, oldest first, right-padded with 0.

        users, pos [B] -> hist [B, max_len] int64, hist_len [B] int64.
        """
        pos = np.asarray(pos, dtype=np.int64)
        start = np.maximum(pos - max_len, 0)
        hist_len = pos - start
        return self.slices(users, start, hist_len, max_len), hist_len

    def slices(self, users: np.ndarray, start: np.ndarray, length: np.ndarray, width: int,
               source: np.ndarray | None = None) -> np.ndarray:
        """[B, width]: items (or `source`, e.g. self.times) start..start+length-1 of each user, right-padded with 0."""
        source = self.items if source is None else source
        idx = self.offsets[users][:, None] + np.asarray(start)[:, None] + np.arange(width)[None, :]
        real = np.arange(width)[None, :] < np.asarray(length)[:, None]
        values = source[np.minimum(idx, max(len(source) - 1, 0))] if len(source) else np.zeros(idx.shape, source.dtype)
        return np.where(real, values, 0).astype(np.int64 if source is self.items else source.dtype)

    def seen_before(self, users: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs of every item each user interacted with before `pos`, for masking seen items."""
        pos = np.asarray(pos, dtype=np.int64)
        rows = np.repeat(np.arange(len(users)), pos)
        return rows, self.items[self.offsets[users][rows] + positions_within(pos)].astype(np.int64)

    def train_positive_keys(self, num_items: int) -> np.ndarray:
        """Sorted keys user * (num_items + 1) + item of every train-part interaction (s[:n-2])."""
        users, idx = train_part(self.offsets)
        keys = np.sort(users.astype(np.int64) * (num_items + 1) + self.items[idx])
        # Not np.unique: for int64 on numpy 2.4 it took 10 s for 10M keys where a sort takes 0.1 s.
        return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def split_targets(rows, split: str) -> tuple[SequenceTable, np.ndarray, np.ndarray, np.ndarray]:
    """Sequence rows (a pyarrow table) -> (their table by row, dense user ids, positions, targets) of a held-out
    split: "test" is each user's last item, "val" the one before; the history is everything before it."""
    local = SequenceTable.of_rows(rows)
    lengths = np.diff(local.offsets)
    pos = lengths - (1 if split == "test" else 2)
    users = rows.column("user_idx").to_numpy().astype(np.int64)
    return local, users, pos, local.items[local.offsets[:-1] + pos].astype(np.int64)


def user_batch(seqs: SequenceTable, users: np.ndarray, pos: np.ndarray, max_len: int,
               user_ids: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The user side of a batch: users [B] (rows of `seqs`) with their history before pos [B] (the last max_len
    items, and their timestamps when the table has them). USER is `user_ids` [B] when `seqs` is indexed by
    something else than the dense user id (a table of a batch's rows, `SequenceTable.of_rows`)."""
    import torch  # here, not at the top: the data stage's workers build sequences without torch

    users = np.array(users, dtype=np.int64)  # a copy: the caller's array may be read-only (pandas, Arrow)
    hist, hist_len = seqs.windows(users, pos, max_len)
    ids = users if user_ids is None else np.array(user_ids, dtype=np.int64)
    out = {USER: torch.from_numpy(ids), HIST: torch.from_numpy(hist), HIST_LEN: torch.from_numpy(hist_len)}
    if seqs.times is not None:
        start = np.asarray(pos, dtype=np.int64) - hist_len
        out[HIST_TIME] = torch.from_numpy(seqs.slices(users, start, hist_len, max_len, seqs.times))
    return out


def pad_histories(histories: list[np.ndarray], max_len: int, users: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Ad-hoc histories (dense items, oldest first) -> the user side of a batch: the last max_len items of each,
    right-padded with 0 to the longest of them (at least 1), not to max_len: no model's user vector depends on
    the padding's width (tests/test_models.py), and a 20-item history then costs 20 positions, not max_len.
    Users default to 0 (a user the run does not know)."""
    import torch

    histories = [np.asarray(h, dtype=np.int64)[-max_len:] for h in histories]
    hist = np.zeros((len(histories), max([1] + [len(h) for h in histories])), dtype=np.int64)
    lengths = np.zeros(len(histories), dtype=np.int64)
    for row, h in enumerate(histories):
        hist[row, :len(h)] = h
        lengths[row] = len(h)
    users = np.zeros(len(histories), dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
    return {USER: torch.from_numpy(users), HIST: torch.from_numpy(hist), HIST_LEN: torch.from_numpy(lengths)}


def in_batches(fn, table, batch_size: int):
    """What a Ray Data `map_batches(fn, batch_format="pyarrow")` gives, in this process: `fn` over consecutive
    slices of the pyarrow table, concatenated (an empty table gives fn's answer for an empty slice)."""
    import pyarrow as pa

    starts = range(0, table.num_rows, batch_size) if table.num_rows else [0]
    return pa.concat_tables([fn(table.slice(i, batch_size)) for i in starts])
