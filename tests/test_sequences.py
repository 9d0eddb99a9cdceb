"""Sequences, splits and windows against a plain pandas reference implementation."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ray_recall.batch import SequenceTable
from ray_recall.stages.preprocess import sequences as S
from ray_recall.stages.preprocess.synthetic import generate
from ray_recall.errors import DataError


def _encoded(seed=0, users=40, items=30):
    df = generate(num_users=users, num_items=items, num_groups=3, mean_length=12, seed=seed)["interactions"]
    # Dense ids as the vocab would assign them (sorted raw ids -> 1..n).
    df["user_idx"] = df["user_id"].rank(method="dense").astype(np.int64)
    df["item_idx"] = df["item_id"].rank(method="dense").astype(np.int32)
    df["timestamp"] = df["timestamp"].astype(np.float64)
    return df


def _reference(df: pd.DataFrame, min_len=3) -> dict[int, list[int]]:
    df = df.assign(tie=S.tie_break_key(df["user_idx"].to_numpy(), df["item_idx"].to_numpy()))
    df = df.sort_values(["user_idx", "timestamp", "tie"])
    seqs = {u: g["item_idx"].tolist() for u, g in df.groupby("user_idx")}
    return {u: s for u, s in seqs.items() if len(s) >= min_len}


def _table(df):
    return pa.table({"user_idx": df["user_idx"].to_numpy(), "item_idx": df["item_idx"].to_numpy(),
                     "timestamp": df["timestamp"].to_numpy()})


def test_sequences_match_pandas_reference_in_any_row_order():
    df = _encoded()
    ref = _reference(df)
    shuffled = df.sample(frac=1.0, random_state=1)
    out = S.build_sequences(_table(shuffled), min_len=3).to_pandas()
    got = {int(u): list(items) for u, items in zip(out["user_idx"], out["items"])}
    assert got == ref
    assert (out["length"] == out["items"].map(len)).all()


def test_ties_are_broken_deterministically():
    df = pd.DataFrame({"user_idx": [1] * 4, "item_idx": np.array([4, 3, 2, 1], np.int32), "timestamp": [5.0] * 4})
    a = S.build_sequences(_table(df)).column("items").to_pylist()
    b = S.build_sequences(_table(df.iloc[::-1])).column("items").to_pylist()
    assert a == b and sorted(a[0]) == [1, 2, 3, 4]


def test_short_users_dropped():
    df = pd.DataFrame({"user_idx": [1, 1, 2, 2, 2], "item_idx": np.array([1, 2, 1, 2, 3], np.int32),
                       "timestamp": [1.0, 2, 1, 2, 3]})
    out = S.build_sequences(_table(df), min_len=3)
    assert out.column("user_idx").to_pylist() == [2]


def test_splits_match_reference():
    df = _encoded(seed=3)
    seqs = S.build_sequences(_table(df))
    ref = _reference(df)
    train = S.split_samples(seqs, "train").to_pandas()
    val = S.split_samples(seqs, "val").to_pandas()
    test = S.split_samples(seqs, "test").to_pandas()
    ref_train = [(u, p, s[p]) for u, s in ref.items() for p in range(1, len(s) - 2)]
    assert sorted(map(tuple, train[["user_idx", "pos", "target"]].to_numpy().tolist())) == sorted(ref_train)
    assert dict(zip(val["user_idx"], val["target"])) == {u: s[-2] for u, s in ref.items()}
    assert dict(zip(test["user_idx"], test["target"])) == {u: s[-1] for u, s in ref.items()}
    assert (test["pos"] == test["user_idx"].map(lambda u: len(ref[u]) - 1)).all()
    # Storage is linear in the log: at most one sample row per interaction.
    assert len(train) + len(val) + len(test) <= len(df)


def test_windows_match_reference():
    df = _encoded(seed=5)
    seqs_tbl = S.build_sequences(_table(df))
    ref = _reference(df)
    table = SequenceTable.from_arrow(seqs_tbl, num_users=int(df["user_idx"].max()))
    samples = S.split_samples(seqs_tbl, "train").to_pandas()
    L = 4
    hist, hist_len = table.windows(samples["user_idx"].to_numpy(), samples["pos"].to_numpy(), L)
    for row, (u, p) in enumerate(zip(samples["user_idx"], samples["pos"])):
        expect = ref[u][max(0, p - L):p]
        assert hist_len[row] == len(expect)
        assert hist[row, :len(expect)].tolist() == expect
        assert (hist[row, len(expect):] == 0).all()


def test_seen_before_and_train_keys():
    df = _encoded(seed=9)
    seqs_tbl = S.build_sequences(_table(df))
    ref = _reference(df)
    n_users = int(df["user_idx"].max())
    table = SequenceTable.from_arrow(seqs_tbl, n_users)
    users = np.array(sorted(ref))
    pos = np.array([len(ref[u]) - 1 for u in users])
    rows, items = table.seen_before(users, pos)
    for r, u in enumerate(users):
        assert sorted(items[rows == r].tolist()) == sorted(ref[u][:-1])
    n_items = int(df["item_idx"].max())
    keys = table.train_positive_keys(n_items)
    expect = sorted({u * (n_items + 1) + i for u, s in ref.items() for i in s[:-2]})
    assert keys.tolist() == expect


def test_duplicate_rows_dropped_and_counted():
    rows = [(1, 10, 5.0), (1, 10, 5.0), (1, 11, 6.0), (1, 12, 7.0), (1, 10, 5.0),  # two repeats of (1, 10, 5)
            (2, 10, 5.0), (2, 10, 6.0), (2, 11, 7.0),  # the same item again later is not a duplicate
            (3, 1, 1.0), (3, 1, 1.0), (3, 2, 2.0)]  # two distinct rows: dropped as too short
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).astype({"item_idx": np.int32})
    for order in (df, df.iloc[::-1], df.sample(frac=1.0, random_state=0)):
        out = S.build_sequences(_table(order), min_len=3).to_pandas()
        assert out["user_idx"].tolist() == [1, 2]
        assert [list(x) for x in out["items"]] == [[10, 11, 12], [10, 10, 11]]
        assert out["length"].tolist() == [3, 3] and out["duplicates"].tolist() == [2, 0]


def test_duplicate_rows_error_names_the_row():
    df = pd.DataFrame({"user_idx": [1, 1, 2, 2, 2, 2], "item_idx": np.array([1, 2, 1, 2, 3, 2], np.int32),
                       "timestamp": [1.0, 2, 1, 2, 3, 2]})
    with pytest.raises(DataError, match=r"log\.parquet: duplicate rows .* user 'u2', item 502, timestamp 2"):
        S.build_sequences(_table(df), duplicates="error", source="table log.parquet",
                          user_vocab=np.array(["u1", "u2"]), item_vocab=np.array([501, 502, 503]))
    # Without duplicates, error mode builds the same sequences as drop mode.
    clean = df.iloc[:5]
    assert S.build_sequences(_table(clean), duplicates="error").equals(S.build_sequences(_table(clean)))


def test_train_part_item_counts_match_reference():
    """Popularity from a column of sequences (as Ray Data hands a block: sliced, chunked) == counting s[:n-2] in pandas."""
    df = _encoded(seed=5)
    ref = _reference(df)
    seqs = S.build_sequences(_table(df))
    size = int(df["item_idx"].max()) + 1
    want = np.bincount(np.concatenate([s[:-2] for s in ref.values()]), minlength=size)
    col = seqs.column("items")
    assert S.train_part_item_counts(col, size).tolist() == want.tolist()
    half = len(seqs) // 2
    sliced = pa.chunked_array([col.combine_chunks()[:half], col.combine_chunks()[half:]])
    assert S.train_part_item_counts(sliced, size).tolist() == want.tolist()
    assert (S.train_part_item_counts(col.combine_chunks()[half:], size)
            + S.train_part_item_counts(col.combine_chunks()[:half], size)).tolist() == want.tolist()
