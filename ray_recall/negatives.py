"""Negative sampling: uniform, word2vec-style popularity^0.75, log-popularity; never a user's own positive.

Sampling weights over dense items 1..N from train-part counts c_i:
  uniform         w_i = 1
  word2vec        w_i = c_i ** 0.75
  log_popularity  w_i = log(1 + c_i)
Items never seen in training have weight 0 under the two popularity samplers.
"Own positives" are the user's train-part items (what training may know);
val/test targets are not used, so nothing about the future leaks into training.
"""

from __future__ import annotations

import numpy as np

from ray_recall.batch import positions_within
from ray_recall.config import resolve_sampler


def sampling_weights(counts: np.ndarray, method) -> np.ndarray:
    """counts [num_items + 1] (index 0 = padding) -> unnormalized weights, 0 at index 0."""
    method = resolve_sampler(method)
    c = np.asarray(counts, dtype=np.float64)
    if method == "uniform":
        w = np.ones_like(c)
    elif method == "word2vec":
        w = c ** 0.75
    else:  # log_popularity
        w = np.log1p(c)
    w[0] = 0.0
    if w.sum() <= 0:
        raise ValueError("sampling weights are all zero: no item has a training interaction")
    return w


BITMAP_MAX_CELLS = 1 << 25  # a chunk's (user, item) membership as a dense bitmap up to 32M cells (32 MB), else sorted keys


class Positives:
    """A set of (user, item) pairs for `NegativeSampler.is_positive`: a chunk's users' own items.

    Looked up as a dense [users x items] bitmap when the set's users times the catalog is at most
    BITMAP_MAX_CELLS (a gather per query, where a binary search over the sorted keys misses the cache at
    every step), else by binary search over sorted keys user * (num_items + 1) + item. The same answers.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int):
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        self.width = num_items + 1
        self.users, local = np.unique(users, return_inverse=True)
        if len(self.users) * self.width <= BITMAP_MAX_CELLS:
            self.bitmap = np.zeros(len(self.users) * self.width, dtype=bool)
            self.bitmap[local.reshape(-1) * self.width + items] = True
            self.keys = None
        else:
            self.bitmap = None
            self.keys = np.unique(users * self.width + items)

    def __len__(self) -> int:
        return int(self.bitmap.sum()) if self.keys is None else len(self.keys)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """users and items broadcastable to one shape -> bool, True where (user, item) is in the set."""
        if self.keys is not None:
            keys = users * self.width + items
            if not len(self.keys):
                return np.zeros(np.shape(keys), dtype=bool)
            return self.keys[np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)] == keys
        if not len(self.users):
            return np.zeros(np.broadcast_shapes(np.shape(users), np.shape(items)), dtype=bool)
        at = np.minimum(np.searchsorted(self.users, users), len(self.users) - 1)
        known = self.users[at] == users
        return self.bitmap[np.where(known, at, 0) * self.width + items] & known


class NegativeSampler:
    """Draws negatives from a fixed distribution, rejecting each user's own positives."""

    def __init__(self, counts: np.ndarray, method="word2vec", positive_keys: np.ndarray | None = None, max_rounds: int = 50):
        w = sampling_weights(counts, method)
        self.num_items = len(w) - 1
        self.probs = w / w.sum()
        self.cdf = np.cumsum(self.probs)
        self.cdf[-1] = 1.0
        with np.errstate(divide="ignore"):
            self.log_probs = np.log(self.probs)  # -inf for never-sampled items
        self.positive_keys = positive_keys if positive_keys is not None else np.zeros(0, dtype=np.int64)
        self.max_rounds = max_rounds

    def positive_keys_of(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Sorted keys (user * (num_items + 1) + item) of (user, item) pairs [n]: a `positive_keys` for `sample`."""
        keys = np.sort(np.asarray(users, dtype=np.int64) * (self.num_items + 1) + np.asarray(items, dtype=np.int64))
        return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys

    def positives_of(self, users: np.ndarray, items: np.ndarray) -> Positives:
        """(user, item) pairs [n] -> a `Positives` set, for `sample`'s and `is_positive`'s `positive_keys`."""
        return Positives(users, items, self.num_items)

    def is_positive(self, users: np.ndarray, items: np.ndarray,
                    positive_keys: np.ndarray | Positives | None = None) -> np.ndarray:
        """users [B] (or broadcastable), items [B, ...] -> bool, True where the item is the user's own positive."""
        positive_keys = self.positive_keys if positive_keys is None else positive_keys
        if isinstance(positive_keys, Positives):
            users = np.asarray(users, dtype=np.int64).reshape(-1, *([1] * (np.ndim(items) - 1)))
            return positive_keys.contains(users, np.asarray(items, dtype=np.int64))
        if len(positive_keys) == 0:
            return np.zeros(np.shape(items), dtype=bool)
        keys = np.asarray(users, dtype=np.int64).reshape(-1, *([1] * (np.ndim(items) - 1))) * (self.num_items + 1) + items
        idx = np.minimum(np.searchsorted(positive_keys, keys), len(positive_keys) - 1)
        return positive_keys[idx] == keys

    def draw(self, shape, rng: np.random.Generator) -> np.ndarray:
        """Item ids of `shape` drawn from the distribution, no rejection (shared negatives mask instead)."""
        return np.minimum(np.searchsorted(self.cdf, rng.random(shape), side="right"), self.num_items).astype(np.int64)

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator,
               positive_keys: np.ndarray | None = None) -> np.ndarray:
        """users [B] -> [B, n] item ids drawn from the distribution, none of them the row's user's positive.

        The positives are `positive_keys` (sorted user * (num_items + 1) + item, e.g. `positive_keys_of` a batch's
        own rows) or, by default, the keys the sampler was built with.
        """
        users = np.asarray(users, dtype=np.int64)
        out = self.draw((len(users), n), rng)
        bad = self.is_positive(users, out, positive_keys)
        for _ in range(self.max_rounds):
            if not bad.any():
                return out
            rows = np.nonzero(bad)[0]
            out[bad] = self.draw(int(bad.sum()), rng)
            bad[bad] = self.is_positive(users[rows], out[bad], positive_keys)
        if bad.any():
            user = int(users[np.nonzero(bad)[0][0]])
            raise ValueError(f"cannot draw a negative for dense user {user}: after {self.max_rounds} rounds every draw "
                             "was one of the user's own items (the user has interacted with nearly every sampleable item)")
        return out

    def sample_shared(self, owners: np.ndarray, row_of: np.ndarray, n: int, rng: np.random.Generator,
                      positive_keys: np.ndarray | Positives | None = None) -> np.ndarray:
        """Rows owned by several users (a packed row's windows) -> [R, n] item ids, none of them a positive of any
        of its row's owners. owners [S] users, row_of [S] their rows (non-decreasing, every row 0..R-1 owned)."""
        owners, row_of = np.asarray(owners, dtype=np.int64), np.asarray(row_of, dtype=np.int64)
        first = np.flatnonzero(np.r_[True, row_of[1:] != row_of[:-1]]) if len(row_of) else np.zeros(0, np.int64)
        count = np.diff(np.r_[first, len(row_of)])  # owners per row
        out = self.draw((len(first), n), rng)
        # The first draw checked owner by owner against its row ([S, n]), OR-reduced over each row's owners.
        hit = self.is_positive(owners, out[row_of], positive_keys)
        bad = np.flatnonzero(np.logical_or.reduceat(hit, first, axis=0)) if len(first) else np.zeros(0, np.int64)
        for _ in range(self.max_rounds):
            if not len(bad):
                return out
            out.reshape(-1)[bad] = self.draw(len(bad), rng)
            # The redrawn cells (flat ids into [R, n]) against each of their row's owners: (owner, item) pairs.
            r = bad // n
            reps = count[r]
            who = np.repeat(first[r], reps) + positions_within(reps)
            hit = self.is_positive(owners[who], np.repeat(out.reshape(-1)[bad], reps), positive_keys)
            bad = bad[np.logical_or.reduceat(hit, np.r_[0, np.cumsum(reps)[:-1]])]
        if not len(bad):
            return out
        user = int(owners[first[bad[0] // n]])
        raise ValueError(f"cannot draw a negative for dense user {user}: after {self.max_rounds} rounds every draw "
                         "was one of the positives of its row's users (they have interacted with nearly every "
                         "sampleable item)")
