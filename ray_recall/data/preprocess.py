"""The data stage on Ray Data: read -> vocab -> sequences -> splits -> popularity, written under <run>/data/.

Nothing here collects the interaction log on the driver: vocabularies (one
row per distinct id), per-item counts and attribute tables are the only
things gathered. Sequences are built by hash-partitioning the log by user and
running a vectorized function over each partition.

Layout written (atomically, as one directory):
  data/sequences/   user_idx, items (time-ordered list), length
  data/{train,val,test}/  user_idx, pos, target   (history = items[:pos], cut at batch time)
  data/users.parquet      user_idx, raw_id, feature codes
  data/items.parquet      item_idx, raw_id, count (train part), title, feature codes
  data/meta.json          sizes, feature vocabularies, statistics
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.aggregate import AggregateFnV2, Count, Sum, Unique
from ray.data.context import ShuffleStrategy

from ray_recall.config import PipelineConfig
from ray_recall.data import sequences as seq
from ray_recall.data.schema import DataSchema
from ray_recall.data.sources import ITEM, USER, load_source, validate_and_normalize
from ray_recall.data.vocab import encode_features, encode_ids
from ray_recall.errors import DataError, RayRecallError
from ray_recall.storage import RunDir

DATA_SECTIONS = ("data",)


def _validated_encode(batch: pa.Table, user_vocab, item_vocab, source: str) -> pa.Table:
    return encode_ids(validate_and_normalize(batch, source), user_vocab, item_vocab)


def _validate_only(batch: pa.Table, source: str) -> pa.Table:
    return validate_and_normalize(batch, source).select([USER, ITEM])


def unwrap_error(e: BaseException) -> BaseException:
    """The RayRecallError behind a Ray task failure, if there is one.

    Ray Data re-raises a UDF's exception as a UserCodeException whose chain ends
    before the original; the original's type and message survive in the text.
    """
    import re

    from ray_recall import errors

    cur, seen = e, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, RayRecallError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    match = re.search(r"ray_recall\.errors\.(DataError|ConfigError): (.*)", str(e))
    if match:
        return getattr(errors, match.group(1))(match.group(2).strip())
    return e


INTERACTIONS_PER_PARTITION = 1_000_000  # data.num_partitions=None: one sequence-building task per this many rows


def _sorted_vocab(values: list, column: str) -> np.ndarray:
    try:
        return np.sort(np.asarray(values))
    except TypeError:
        raise DataError(f"column {column!r} mixes id types (e.g. numbers and strings); make them one type") from None


class TrainPartItemCounts(AggregateFnV2):
    """Interactions per item in the train part of every sequence (s[:n-2]): the popularity of the samplers.

    One bincount per block of sequences, summed: the driver only ever holds num_items + 1 counts.
    """

    def __init__(self, num_items: int):
        self._size = num_items + 1
        super().__init__("item_counts", zero_factory=self._zeros, on="items", ignore_nulls=True)

    def _zeros(self) -> np.ndarray:
        return np.zeros(self._size, dtype=np.int64)

    def aggregate_block(self, block: pa.Table) -> np.ndarray:
        return seq.train_part_item_counts(block.column("items"), self._size)

    def combine(self, current: np.ndarray, new: np.ndarray) -> np.ndarray:
        return current + new


def _global_aggregate(ds: ray.data.Dataset, *aggs) -> dict:
    """ds.aggregate(*aggs) with task-based shuffling: an all-to-one reduce needs no aggregator actors
    (whose start cost about 2.5 s on a small cluster). Datasets derived later from `ds` share its
    context, and the keyed repartition needs the hash shuffle back."""
    previous = ds.context.shuffle_strategy
    ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        return ds.aggregate(*aggs)
    finally:
        ds.context.shuffle_strategy = previous


def preprocess(cfg: PipelineConfig, run: RunDir, log=print) -> dict:
    """Run the data stage; returns the statistics written to data/meta.json."""
    t0 = time.perf_counter()
    raw = load_source(cfg.data)
    log(f"[data] reading {raw.description}")
    try:
        validated = raw.interactions.map_batches(_validate_only, fn_kwargs={"source": raw.description}, batch_format="pyarrow",
                                                 batch_size=None)
        # One pass: both vocabularies and the row count (which sizes the partitions below).
        found = _global_aggregate(validated, Unique(USER), Unique(ITEM), Count())
    except Exception as e:  # Ray wraps errors raised in tasks
        err = unwrap_error(e)
        if isinstance(err, RayRecallError):
            raise err from None
        raise DataError(f"{raw.description}: cannot read interactions: {str(e).strip().splitlines()[-1]}") from None
    num_rows = int(found["count()"] or 0)
    if num_rows == 0:
        raise DataError(f"{raw.description}: no interactions (the input is empty)")
    user_vocab = _sorted_vocab(found[f"unique({USER})"], USER)
    item_vocab = _sorted_vocab(found[f"unique({ITEM})"], ITEM)
    num_partitions = cfg.data.num_partitions or max(4, -(-num_rows // INTERACTIONS_PER_PARTITION))
    log(f"[data] {num_rows:,} rows, {len(user_vocab):,} users, {len(item_vocab):,} items; "
        f"building sequences in {num_partitions} partitions")

    encoded = raw.interactions.map_batches(
        _validated_encode, fn_kwargs={"user_vocab": user_vocab, "item_vocab": item_vocab, "source": raw.description},
        batch_format="pyarrow", batch_size=None)
    # Duplicates are found here, where all rows of a user are in one block; the vocabularies travel
    # with the tasks only to name an offending row in the original ids.
    seq_kwargs = {"min_len": cfg.data.min_user_interactions, "duplicates": cfg.data.duplicates, "source": raw.description}
    if cfg.data.duplicates == "error":
        seq_kwargs.update(user_vocab=user_vocab, item_vocab=item_vocab)
    sequences = encoded.repartition(num_partitions, keys=["user_idx"]).map_batches(
        seq.build_sequences, fn_kwargs=seq_kwargs, batch_format="pyarrow", batch_size=None)

    with run.staged_dir("data") as tmp:
        try:
            sequences.write_parquet(run.uri_of(tmp, "sequences"))
        except Exception as e:  # a DataError (e.g. a duplicate row) raised inside a task arrives wrapped
            err = unwrap_error(e)
            if isinstance(err, RayRecallError):
                raise err from None
            raise
        seq_ds = ray.data.read_parquet(run.uri_of(tmp, "sequences"))
        # One pass for the statistics and the samplers' popularity.
        stats = _global_aggregate(seq_ds, Count(), Sum("length"), Sum("duplicates"), TrainPartItemCounts(len(item_vocab)))
        num_seq_users = int(stats["count()"] or 0)
        if num_seq_users == 0:
            raise DataError(f"{raw.description}: no user has {cfg.data.min_user_interactions} or more interactions "
                            "(data.min_user_interactions)")
        num_interactions, num_duplicates = int(stats["sum(length)"]), int(stats["sum(duplicates)"])
        log(f"[data] sequences: {num_seq_users:,} users, {num_interactions:,} interactions "
            f"({time.perf_counter() - t0:.1f}s); writing splits")
        # Every kept user has >= 3 items: one validation and one test sample each, and a train sample
        # at every position from 1 to n-3 (position 0 has no history), n - 3 in all.
        counts = {"train": num_interactions - 3 * num_seq_users, "val": num_seq_users, "test": num_seq_users}
        for split in ("train", "val", "test"):
            if counts[split] == 0:  # Ray Data would write no file at all
                _write_arrow(run, seq.SAMPLE_SCHEMA.empty_table(), tmp, split, "empty.parquet")
                continue
            out = seq_ds.map_batches(seq.split_samples, fn_kwargs={"split": split}, batch_format="pyarrow", batch_size=None)
            # Rows in sequence-file order, not in whichever order the tasks finish: training reads
            # them in file order, so the same log gives the same batches (and the same model) on any cluster.
            out.context.execution_options.preserve_order = True
            out.write_parquet(run.uri_of(tmp, split))
        item_counts = stats["item_counts"]

        user_codes, user_values = encode_features(raw.users, USER, user_vocab, raw.user_feature_cols, raw.multi_value_cols,
                                                  raw.multi_value_sep)
        item_codes, item_values = encode_features(raw.items, ITEM, item_vocab, raw.item_feature_cols, raw.multi_value_cols,
                                                  raw.multi_value_sep)
        users_tbl = {"user_idx": np.arange(1, len(user_vocab) + 1), "raw_id": user_vocab}
        users_tbl.update({f"f_{k}": list(v[1:]) if v.ndim == 2 else v[1:] for k, v in user_codes.items()})
        items_tbl = {"item_idx": np.arange(1, len(item_vocab) + 1), "raw_id": item_vocab, "count": item_counts[1:]}
        items_tbl["title"] = _titles(raw, item_vocab)
        items_tbl.update({f"f_{k}": list(v[1:]) if v.ndim == 2 else v[1:] for k, v in item_codes.items()})
        _write_table(run, pd.DataFrame(users_tbl), tmp, "users.parquet")
        _write_table(run, pd.DataFrame(items_tbl), tmp, "items.parquet")
        meta = {
            "source": raw.description,
            "num_users": len(user_vocab),
            "num_items": len(item_vocab),
            "max_len": cfg.data.max_len,
            "num_interactions": num_interactions,
            "num_sequence_users": int(num_seq_users),
            "dropped_users": int(len(user_vocab) - num_seq_users),
            "duplicates": cfg.data.duplicates,
            "duplicate_rows_dropped": num_duplicates,
            "min_user_interactions": cfg.data.min_user_interactions,
            "samples": counts,
            "user_features": {k: {"values": v, "multi": k in raw.multi_value_cols} for k, v in user_values.items()},
            "item_features": {k: {"values": v, "multi": k in raw.multi_value_cols} for k, v in item_values.items()},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        run.write_json(meta, tmp, "meta.json")
    log(f"[data] {num_interactions:,} interactions, {num_seq_users:,} users kept "
        f"({meta['dropped_users']:,} dropped with < {cfg.data.min_user_interactions}), "
        f"{num_duplicates:,} duplicate rows dropped, samples {counts} "
        f"in {meta['seconds']:.1f}s")
    return meta


def _titles(raw, item_vocab: np.ndarray) -> list[str]:
    if raw.items is None or not raw.title_col or raw.title_col not in raw.items.columns:
        return [str(v) for v in item_vocab]
    from ray_recall.data.vocab import lookup

    titles = np.array([str(v) for v in item_vocab], dtype=object)
    dense = lookup(item_vocab, raw.items[ITEM].to_numpy())
    ok = dense > 0
    titles[dense[ok] - 1] = raw.items[raw.title_col].astype(str).to_numpy()[ok]
    return list(titles)


def _write_table(run: RunDir, df: pd.DataFrame, *parts: str) -> None:
    _write_arrow(run, pa.Table.from_pandas(df, preserve_index=False), *parts)


def _write_arrow(run: RunDir, table: pa.Table, *parts: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    run.write_bytes(sink.getvalue().to_pybytes(), *parts)


# --------------------------------------------------------------------------------------------
# Readers used by the later stages


def _read_table(run: RunDir, *parts: str) -> pa.Table:
    return pq.read_table(run.path(*parts), filesystem=run.fs)


def load_meta(run: RunDir) -> dict:
    if not run.exists("data", "meta.json"):
        raise DataError(f"{run.uri}: no preprocessed data (data/meta.json); run the preprocess stage first")
    return run.read_json("data", "meta.json")


def load_schema(run: RunDir, sampler: str | None = None) -> DataSchema:
    """Sizes and feature tables for building a model (and the sampler's log-probabilities if `sampler` is given)."""
    meta = load_meta(run)
    schema = DataSchema(num_users=meta["num_users"], num_items=meta["num_items"], max_len=meta["max_len"])
    for side, fname, feats in (("user", "users.parquet", meta["user_features"]), ("item", "items.parquet", meta["item_features"])):
        tbl = _read_table(run, "data", fname)
        target = schema.user_features if side == "user" else schema.item_features
        for name, info in feats.items():
            col = tbl.column(f"f_{name}")
            if info["multi"]:
                rows = np.array(col.to_pylist(), dtype=np.int64)
                arr = np.zeros((len(rows) + 1, rows.shape[1]), dtype=np.int64)
            else:
                rows = col.to_numpy()
                arr = np.zeros(len(rows) + 1, dtype=np.int64)
            arr[1:] = rows
            target[name] = arr
            schema.cardinality[name] = len(info["values"])
        if side == "item" and sampler is not None:
            from ray_recall.data.negatives import NegativeSampler

            counts = np.concatenate([[0], tbl.column("count").to_numpy()])
            schema.item_log_prob = NegativeSampler(counts, sampler).log_probs
    return schema


def load_sequences(run: RunDir, num_users: int) -> seq.SequenceTable:
    return seq.SequenceTable.from_arrow(_read_table(run, "data", "sequences"), num_users)


def load_items(run: RunDir) -> pd.DataFrame:
    """item_idx, raw_id, count, title (one row per item)."""
    return _read_table(run, "data", "items.parquet").select(["item_idx", "raw_id", "count", "title"]).to_pandas()


def load_user_ids(run: RunDir) -> np.ndarray:
    """Original user ids in dense-id order (dense id d is element d - 1)."""
    return _read_table(run, "data", "users.parquet").column("raw_id").to_numpy(zero_copy_only=False)


def load_samples(run: RunDir, split: str) -> pd.DataFrame:
    return _read_table(run, "data", split).to_pandas()
