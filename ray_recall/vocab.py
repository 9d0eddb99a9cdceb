"""Vocabularies: original ids <-> dense ids 1..n (in sorted order of the original ids); 0 = padding / unknown."""

from __future__ import annotations

import numpy as np

from ray_recall.errors import DataError


def lookup(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sorted vocabulary [n], values [B] -> dense ids [B] int64 (1..n; 0 where the value is not in the vocabulary)."""
    if len(vocab) == 0:
        return np.zeros(len(values), dtype=np.int64)
    values = np.asarray(values)
    if vocab.dtype.kind != values.dtype.kind and not (vocab.dtype.kind in "iu" and values.dtype.kind in "iu"):
        # Mixed kinds (e.g. ints in the log, "10" in a request): compare as strings, in string order.
        text = vocab.astype(str)
        order = np.argsort(text, kind="stable")
        dense = lookup(text[order], values.astype(str))
        return np.where(dense > 0, order[np.maximum(dense - 1, 0)] + 1, 0).astype(np.int64)
    idx = np.searchsorted(vocab, values)
    idx_c = np.minimum(idx, len(vocab) - 1)
    found = vocab[idx_c] == values
    return np.where(found, idx_c + 1, 0).astype(np.int64)


class Vocabulary:
    """The original ids of one side (users or items) in dense-id order: dense id d is `ids[d - 1]`."""

    def __init__(self, ids: np.ndarray, side: str):
        self.ids = np.asarray(ids)
        self.side = side  # "user" or "item", for messages

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, values) -> np.ndarray:
        """Original ids [n] -> dense ids [n] int64 (0 where an id is not in the vocabulary)."""
        return lookup(self.ids, np.atleast_1d(np.asarray(values)))

    def decode(self, dense) -> np.ndarray:
        """Dense ids [n] (1..len) -> original ids [n]; a dense id outside 1..len is a ValueError naming it."""
        d = np.atleast_1d(np.asarray(dense, dtype=np.int64))
        if len(d) and (d.min() < 1 or d.max() > len(self.ids)):
            bad = d[(d < 1) | (d > len(self.ids))][0]
            raise DataError(f"dense {self.side} id {bad} is outside 1..{len(self.ids)} (0 is padding / unknown)")
        return self.ids[d - 1]

    def first(self, n: int) -> list:
        """Up to n original ids as Python values (for messages and examples)."""
        return [v.item() if hasattr(v, "item") else v for v in self.ids[:n]]
