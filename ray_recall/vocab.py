"""Vocabularies: original ids <-> dense ids 1..n (in sorted order of the original ids); 0 = padding / unknown."""

from __future__ import annotations

from typing import Sequence

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


def _same_kind(a: np.dtype, b: np.dtype) -> bool:
    return a.kind == b.kind or (a.kind in "iu" and b.kind in "iu")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class Vocabulary:
    """The original ids of one side (users or items) in dense-id order: dense id d is `ids[d - 1]`."""

    def __init__(self, ids: np.ndarray, side: str):
        self.ids = np.asarray(ids)
        self.side = side  # "user" or "item", for messages

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, values) -> np.ndarray:
        """Original ids [n] -> dense ids [n] int64 (0 where an id is not in the vocabulary).

        An array of the vocabulary's own kind is looked up as is. Anything else (a Python list from a
        request, mixed ints and strings) is first normalized value by value to the vocabulary's type
        (`normalize`), so that the cost is O(n log V) and never a conversion of the whole vocabulary.
        """
        if isinstance(values, np.ndarray) and values.dtype.kind != "O" and _same_kind(self.ids.dtype, values.dtype):
            return lookup(self.ids, np.atleast_1d(values))
        if np.isscalar(values):
            values = [values]
        keys, ok = self.normalize(values)
        out = np.zeros(len(ok), dtype=np.int64)
        if ok.any():
            out[ok] = lookup(self.ids, keys[ok])
        return out

    def normalize(self, values: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Python ids [n] -> (keys [n] of the vocabulary's dtype, ok [n]): ok is False where a value cannot be
        in the vocabulary at all (an integer outside int64, a string that is no integer's decimal form for an
        integer vocabulary, a string longer than a fixed-width vocabulary's width, any other type)."""
        values = list(values)
        kind = self.ids.dtype.kind
        ok = np.zeros(len(values), dtype=bool)
        if kind in "iu":
            keys = np.zeros(len(values), dtype=self.ids.dtype)
            lo, hi = np.iinfo(self.ids.dtype).min, np.iinfo(self.ids.dtype).max
            for i, v in enumerate(values):
                if isinstance(v, str) and len(v) <= 20:  # "10" names item 10 (the decimal form, exactly)
                    try:
                        n = int(v)
                    except ValueError:
                        continue
                    v = n if str(n) == v else None
                if _is_int(v) and lo <= v <= hi:
                    keys[i], ok[i] = v, True
            return keys, ok
        if kind in "OUS":
            width = self.ids.dtype.itemsize // (4 if kind == "U" else 1) if kind != "O" else None
            keys = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):
                if _is_int(v):
                    v = str(int(v))  # 10 names the item "10"
                if isinstance(v, str) and (width is None or len(v) <= width):
                    keys[i], ok[i] = v, True
            # Object keys compare as Python strings against an object vocabulary; a fixed-width one gets keys
            # no wider than itself (values longer than its width were ruled out above).
            return (keys if kind == "O" else np.where(ok, keys, "").astype(self.ids.dtype)), ok
        return np.asarray(values, dtype=self.ids.dtype), np.ones(len(values), dtype=bool)

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
