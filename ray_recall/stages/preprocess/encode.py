"""Encoding the log and the attribute tables with the vocabularies: original ids -> dense ids, values -> codes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_recall.vocab import lookup


def encode_ids(batch: pa.Table, user_vocab: np.ndarray, item_vocab: np.ndarray) -> pa.Table:
    """(user_id, item_id, timestamp) -> (user_idx, item_idx, timestamp)."""
    users = lookup(user_vocab, batch.column("user_id").to_numpy(zero_copy_only=False))
    items = lookup(item_vocab, batch.column("item_id").to_numpy(zero_copy_only=False))
    return pa.table({"user_idx": users, "item_idx": items.astype(np.int32), "timestamp": batch.column("timestamp")})


def encode_features(table: pd.DataFrame | None, key: str, id_vocab: np.ndarray, columns: tuple[str, ...],
                    multi_value: tuple[str, ...], sep: str) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Categorical feature codes per dense id.

    Returns ({name: [n+1] or [n+1, M] int64 codes}, {name: values in code order (code 1 = values[0])}).
    Every value is treated as a category (its string form); an empty value or an id
    missing from `table` gets code 0.
    """
    n = len(id_vocab)
    codes: dict[str, np.ndarray] = {}
    values_of: dict[str, list[str]] = {}
    if not columns:
        return codes, values_of
    if table is None:
        raise ValueError(f"feature columns {list(columns)} requested but the source has no attribute table for {key}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"feature column {missing[0]!r} is not in the {key} attributes; found {sorted(table.columns)}")
    keys = table[key].to_numpy()
    dense = lookup(id_vocab, keys)
    present = dense > 0
    dense = dense[present]
    for col in columns:
        raw = table[col].to_numpy()[present]
        text = np.array(["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in raw], dtype=object)
        if col in multi_value:
            tokens = [[t for t in s.split(sep) if t] for s in text]
            vocab = sorted({t for row in tokens for t in row})
            pos = {v: i + 1 for i, v in enumerate(vocab)}
            width = max([len(r) for r in tokens] + [1])
            arr = np.zeros((n + 1, width), dtype=np.int64)
            for row_id, row in zip(dense, tokens):
                arr[row_id, : len(row)] = [pos[t] for t in row]
        else:
            vocab = sorted({t for t in text if t})
            pos = {v: i + 1 for i, v in enumerate(vocab)}
            arr = np.zeros(n + 1, dtype=np.int64)
            arr[dense] = [pos.get(t, 0) for t in text]
        codes[col] = arr
        values_of[col] = vocab
    return codes, values_of
