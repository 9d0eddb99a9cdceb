"""Training batches, built from users' sequence rows as Ray Data streams them (data/sequences).

A worker receives rows of whole users (user_idx, items, times, length) and turns each chunk of rows
into training examples of those users' train parts (s[:n-2]; the last two items are validation and
test), so it holds nothing that grows with the number of users:

- per prefix: every train-part position p >= 1 is a sample, target s[p], history the last max_len
  items before it (the classic way, for every model);
- all positions: windows of up to max_len train-part items, each position's next item its target
  (`POS` [W, L]), so that a causal encoder scores every position in one pass.

Negatives are drawn for each row (a sample, or a window whose positions share them), never one of the
user's own train-part items: the rows carry those, so rejection needs no global table. With shared
negatives (train.shared_negatives) one draw serves a whole batch (`NEG_POOL`, one row per batch the
chunk will be cut into) and a row's own items among it are flagged (`NEG_SEEN`) for the loss to mask. Every epoch
draws fresh ones, seeded by (seed, epoch, the chunk's first user): the same epoch of the same run
draws the same negatives whatever the worker count. A chunk's examples are shuffled together
(seeded) and cut into steps by the loop (`split_batches`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from ray_recall import batch as B
from ray_recall.batch import SequenceTable, positions_within, train_part
from ray_recall.negatives import NegativeSampler

CHUNK_EXAMPLES = 16384  # examples built at a time (a chunk's are shuffled together), about


def rows_per_chunk(examples_per_user: float) -> int:
    """Users per Ray Data batch so that a chunk holds about CHUNK_EXAMPLES examples."""
    return max(1, int(round(CHUNK_EXAMPLES / max(examples_per_user, 1.0))))


def split_batches(chunk: dict[str, torch.Tensor], batch_size: int):
    """A built chunk -> its consecutive batches of `batch_size` examples (views; the last may be shorter).

    All-position batches (POS [E, L]) are cut to their longest window: the inputs are right-padded and the
    encoders causal, so the columns past it are padding on every row and change no output.
    A chunk with shared negatives (`NEG_POOL` [batches, N]) gives its i-th batch NEG = NEG_POOL[i:i+1]; a packed
    chunk (`BATCH_END`) gives the rows each run of `batch_size` windows was packed into.
    """
    pool, ends = chunk.get(B.NEG_POOL), chunk.get(B.BATCH_END)
    if ends is not None:  # packed: batch i is the rows its windows were packed into
        bounds = list(zip([0, *ends[:-1].tolist()], ends.tolist()))
    else:
        bounds = [(start, start + batch_size) for start in range(0, len(chunk[B.USER]), batch_size)]
    for i, (start, stop) in enumerate(bounds):
        batch = {k: v[start:stop] for k, v in chunk.items() if k not in (B.NEG_POOL, B.BATCH_END)}
        if pool is not None:
            batch[B.NEG] = pool[i:i + 1]
        if batch[B.POS].dim() == 2 and len(batch[B.POS]):
            width = int(batch[B.HIST_LEN].max())
            if width < batch[B.HIST].shape[1]:
                for key in (B.HIST, B.HIST_TIME, B.POS, B.HIST_SEG, B.HIST_POS, B.HIST_USER):
                    if key in batch:
                        batch[key] = batch[key][:, :width]
        yield batch


def by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffled order of examples -> one whose consecutive `batch_size` runs hold examples of about the same length
    (sorted by length, the runs in random order; the shortest leftover run last, so that runs stay aligned)."""
    ranked = order[np.argsort(lengths[order], kind="stable")]
    rest = len(ranked) % batch_size
    full = ranked[rest:].reshape(-1, batch_size)
    return np.concatenate([full[rng.permutation(len(full))].reshape(-1), ranked[:rest]])


def window_starts(m: np.ndarray, max_len: int, window: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train-part lengths m [K] -> (row [W], start [W], length [W]) of the all-position windows, by `window`:

    tile    every target once: windows of max_len inputs from the end back to the start (the first may be short);
    shifted every target once, as tile, but a user with more targets than max_len has the tiling's boundaries
            moved back by a fresh offset in [0, max_len) each epoch (the most recent window holds that many
            targets, the others are full up to the first): a target's context differs from epoch to epoch;
    last    the most recent window only (SASRec's original recipe);
    random  one window per user, its start drawn uniformly (a fresh window every epoch).

    A window (a, len) has inputs s[a:a+len] and targets s[a+1:a+len+1]; len <= max_len.
    """
    targets = np.maximum(m - 1, 0)  # positions 1..m-1 have a target
    if window in ("tile", "shifted"):
        head = np.zeros(len(m), np.int64)  # targets in the most recent window when it is cut short; 0: a full one
        if window == "shifted":
            head = np.where(targets > max_len, rng.integers(0, max_len, len(m)), 0)
        count = (head > 0) + -(-(targets - head) // max_len)
        row = np.repeat(np.arange(len(m)), count)
        j = positions_within(count) - (head > 0)[row]  # -1: the short most recent window
        top = targets[row] - head[row]
        end = np.minimum(targets[row], top - j * max_len)  # the window's last target position
        start = np.maximum(top - (j + 1) * max_len, 0)
        return row, start, end - start
    if window not in ("last", "random"):
        raise ValueError(f"window must be tile, shifted, last or random, got {window!r}")
    row = np.flatnonzero(targets > 0)
    last = np.maximum(targets[row] - max_len, 0)
    start = last if window == "last" else np.floor(rng.random(len(row)) * (last + 1)).astype(np.int64)
    return row, start, np.minimum(targets[row] - start, max_len)


def pack_windows(lengths: np.ndarray, width: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows' lengths [W], in batch order -> (row [W], offset [W], ends [G]): each consecutive run of `group`
    windows (one batch) laid one after another into rows of `width` positions, first-fit decreasing, so that a
    batch's positions are nearly all targets. Window w occupies row[w], positions offset[w]..offset[w] + len - 1;
    the runs' rows are numbered across the chunk, run g's end at ends[g]. A full window fills a row alone.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    row, offset, ends = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64), []
    rows = 0
    for s in range(0, len(lengths), group):
        lens = lengths[s:s + group]
        full = np.flatnonzero(lens >= width)
        row[s + full] = rows + np.arange(len(full))
        rows += len(full)
        fill: list[int] = []  # positions used in each of this run's shared rows
        for i in np.flatnonzero(lens < width)[np.argsort(-lens[lens < width], kind="stable")].tolist():
            n = int(lens[i])
            for r, used in enumerate(fill):
                if used + n <= width:
                    break
            else:
                r = len(fill)
                fill.append(0)
            row[s + i], offset[s + i] = rows + r, fill[r]
            fill[r] += n
        rows += len(fill)
        ends.append(rows)
    return row, offset, np.asarray(ends, dtype=np.int64)


class SequenceBatchBuilder(ArrowBatchCollateFn):
    """collate_fn for `iter_torch_batches` over sequence rows: a chunk of users -> their training examples.

    targets: "per_prefix" or "all_positions"; window: how all-position windows are cut (`window_starts`).
    Output keys (see ray_recall.batch): USER, HIST, HIST_LEN, HIST_TIME (when the rows carry times), POS
    ([E] per prefix, [E, L] all positions), NEG [E, N]. `length_batches` (all positions): order the chunk's
    windows so that each run of that many has windows of about the same length (`by_length`).
    `shared_batches`: the batch size the chunk will be cut into, for one draw of negatives per batch
    (NEG_POOL [ceil(E / shared_batches), N] and NEG_SEEN [E, N] instead of NEG); 0 = a draw per row.
    `pack_batches` (all positions): the batch size, in windows, whose windows are packed into shared rows
    (`pack_windows`; HIST_SEG, HIST_POS, HIST_USER and BATCH_END, one draw of negatives per row).
    """

    def __init__(self, sampler: NegativeSampler, max_len: int, num_negatives: int, seed: int, epoch: int,
                 targets: str = "per_prefix", window: str = "tile", length_batches: int = 0, shared_batches: int = 0,
                 pack_batches: int = 0):
        if targets not in ("per_prefix", "all_positions"):
            raise ValueError(f"targets must be per_prefix or all_positions, got {targets!r}")
        super().__init__()
        self.sampler, self.max_len, self.num_negatives = sampler, max_len, num_negatives
        self.seed, self.epoch, self.targets, self.window = seed, epoch, targets, window
        self.length_batches = length_batches if targets == "all_positions" else 0  # batch size for `by_length`; 0 = off
        self.shared_batches = shared_batches
        self.pack_batches = pack_batches if targets == "all_positions" and not shared_batches else 0

    def __call__(self, rows: pa.Table) -> dict[str, torch.Tensor]:
        users = rows.column("user_idx").to_numpy().astype(np.int64)
        local = SequenceTable.of_rows(rows)  # indexed by row number within the chunk
        m = np.maximum(np.diff(local.offsets) - 2, 0)  # train-part lengths
        rng = np.random.default_rng([self.seed, self.epoch, int(users[0]) if len(users) else 0, len(users)])
        row_of, idx = train_part(local.offsets)
        own = self.sampler.positives_of(users[row_of], local.items[idx])  # the rows' own train-part items
        L = self.max_len
        if self.targets == "per_prefix":
            counts = np.maximum(m - 1, 0)
            row = np.repeat(np.arange(len(users)), counts)
            pos = positions_within(counts) + 1
            hist, hist_len = local.windows(row, pos, L)
            start = pos - hist_len
            target = local.items[local.offsets[row] + pos].astype(np.int64)
        else:
            row, start, hist_len = window_starts(m, L, self.window, rng)
            hist = local.slices(row, start, hist_len, L)
            target = local.slices(row, start + 1, hist_len, L)
        order = rng.permutation(len(row))
        if self.length_batches:
            order = by_length(order, hist_len, self.length_batches, rng)
        row, start, hist, hist_len, target = row[order], start[order], hist[order], hist_len[order], target[order]
        out = {B.USER: torch.from_numpy(users[row]), B.HIST: torch.from_numpy(hist),
               B.HIST_LEN: torch.from_numpy(hist_len.astype(np.int64)), B.POS: torch.from_numpy(target)}
        if local.times is not None:
            out[B.HIST_TIME] = torch.from_numpy(local.slices(row, start, hist_len, L, local.times))
        if self.pack_batches:
            return self._packed(out, users[row], own, rng)
        if self.num_negatives and self.shared_batches:
            size = self.shared_batches
            pool = self.sampler.draw((-(-len(row) // size), self.num_negatives), rng)
            # Batch by batch: a chunk-wide [E, N] copy of the pools (and its keys) would be ~100 MB at 16k x 256.
            seen = [self.sampler.is_positive(u, np.broadcast_to(p, (len(u), len(p))), own)
                    for u, p in zip(np.split(users[row], np.arange(size, len(row), size)), pool)]
            out[B.NEG_POOL] = torch.from_numpy(pool)
            out[B.NEG_SEEN] = torch.from_numpy(np.concatenate(seen) if seen else np.zeros((0, self.num_negatives), bool))
        elif self.num_negatives:
            out[B.NEG] = torch.from_numpy(self.sampler.sample(users[row], self.num_negatives, rng, own))
        else:
            out[B.NEG] = torch.zeros((len(row), 0), dtype=torch.int64)
        return out


    def _packed(self, windows: dict[str, torch.Tensor], owners: np.ndarray, own: np.ndarray,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The chunk's windows (in batch order, owners [W] their users) laid into packed rows."""
        L, hist_len = self.max_len, windows[B.HIST_LEN].numpy()
        row, offset, ends = pack_windows(hist_len, L, self.pack_batches)
        R = int(ends[-1]) if len(ends) else 0
        w, t = np.nonzero(np.arange(L)[None, :] < hist_len[:, None])  # every real position, window by window
        dest = row[w] * L + offset[w] + t

        def place(values: np.ndarray, fill) -> torch.Tensor:
            flat = np.full(R * L, fill, dtype=values.dtype)
            flat[dest] = values[w, t] if values.ndim == 2 else values
            return torch.from_numpy(flat.reshape(R, L))

        out = {key: place(windows[key].numpy(), 0) for key in (B.HIST, B.POS, B.HIST_TIME) if key in windows}
        out[B.HIST_SEG], out[B.HIST_POS], out[B.HIST_USER] = place(w, -1), place(t, 0), place(owners[w], 0)
        out[B.HIST_LEN] = torch.from_numpy(np.bincount(row, weights=hist_len, minlength=R).astype(np.int64))
        user = np.zeros(R, dtype=np.int64)
        user[row] = owners  # a row's user: one of its windows' (the loss of packed rows never reads it)
        out[B.USER] = torch.from_numpy(user)
        by_row = np.argsort(row, kind="stable")
        if self.num_negatives:
            out[B.NEG] = torch.from_numpy(self.sampler.sample_shared(owners[by_row], row[by_row], self.num_negatives,
                                                                     rng, own))
        else:
            out[B.NEG] = torch.zeros((R, 0), dtype=torch.int64)
        out[B.BATCH_END] = torch.from_numpy(ends)
        return out


def examples_per_user(meta: dict, targets: str, max_len: int, window: str) -> float:
    """About how many examples one user row yields (to size the chunks)."""
    users = max(meta["num_sequence_users"], 1)
    samples = meta["samples"]["train"] / users
    if targets == "per_prefix":
        return samples
    if window in ("tile", "shifted"):  # shifted cuts a long user's most recent window short: one window more
        return max(1.0, samples / max_len + (2.0 if window == "shifted" else 1.0))
    return 1.0
