"""The data stage on Ray Data: read -> vocab -> sequences -> splits -> popularity, written under <run>/data/.

On Ray Data nothing collects the interaction log on the driver: vocabularies
(one row per distinct id), per-item counts and attribute tables are the only
things gathered. Sequences are built by hash-partitioning the log by user and
running a vectorized function over each partition. A log of at most
`data.in_process_max_rows` interactions (2M by default) is instead prepared in
the driver by the same functions, skipping Ray Data's fixed cost; the driver's
memory stays bounded by that setting, not by the log.

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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.aggregate import AggregateFnV2, Count, Sum, Unique
from ray.data._internal.arrow_ops.transform_pyarrow import _hash_partition_vectorized
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


def _partitions(cfg: PipelineConfig, num_rows: int) -> int:
    return cfg.data.num_partitions or max(4, -(-num_rows // INTERACTIONS_PER_PARTITION))


def _sequence_kwargs(cfg: PipelineConfig, raw, user_vocab: np.ndarray, item_vocab: np.ndarray) -> dict:
    kwargs = {"min_len": cfg.data.min_user_interactions, "duplicates": cfg.data.duplicates, "source": raw.description}
    if cfg.data.duplicates == "error":  # the vocabularies only name an offending row in the original ids
        kwargs.update(user_vocab=user_vocab, item_vocab=item_vocab)
    return kwargs


def _unreadable_error(raw, e: BaseException) -> DataError:
    return DataError(f"{raw.description}: cannot read interactions: {str(e).strip().splitlines()[-1]}")


def _empty_error(raw) -> DataError:
    return DataError(f"{raw.description}: no interactions (the input is empty)")


def _sample_counts(stats: dict) -> dict:
    """Every kept user has >= 3 items: one validation and one test sample each, and a train sample
    at every position from 1 to n-3 (position 0 has no history), n - 3 in all."""
    return {"train": stats["interactions"] - 3 * stats["users"], "val": stats["users"], "test": stats["users"]}


def _no_users_error(cfg: PipelineConfig, raw) -> DataError:
    return DataError(f"{raw.description}: no user has {cfg.data.min_user_interactions} or more interactions "
                     "(data.min_user_interactions)")


def _on_ray_data(cfg: PipelineConfig, raw, run: RunDir, tmp: str, log) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sequences and splits written under `tmp` by Ray Data; returns the vocabularies and the statistics."""
    t0 = time.perf_counter()
    try:
        validated = raw.interactions.map_batches(_validate_only, fn_kwargs={"source": raw.description}, batch_format="pyarrow",
                                                 batch_size=None)
        # One pass: both vocabularies and the row count (which sizes the partitions below).
        found = _global_aggregate(validated, Unique(USER), Unique(ITEM), Count())
    except Exception as e:  # Ray wraps errors raised in tasks
        err = unwrap_error(e)
        if isinstance(err, RayRecallError):
            raise err from None
        raise _unreadable_error(raw, e) from None
    num_rows = int(found["count()"] or 0)
    if num_rows == 0:
        raise _empty_error(raw)
    user_vocab = _sorted_vocab(found[f"unique({USER})"], USER)
    item_vocab = _sorted_vocab(found[f"unique({ITEM})"], ITEM)
    num_partitions = _partitions(cfg, num_rows)
    log(f"[data] {num_rows:,} rows, {len(user_vocab):,} users, {len(item_vocab):,} items; "
        f"building sequences in {num_partitions} partitions")

    encoded = raw.interactions.map_batches(
        _validated_encode, fn_kwargs={"user_vocab": user_vocab, "item_vocab": item_vocab, "source": raw.description},
        batch_format="pyarrow", batch_size=None)
    # Duplicates are found here, where all rows of a user are in one block.
    sequences = encoded.repartition(num_partitions, keys=["user_idx"]).map_batches(
        seq.build_sequences, fn_kwargs=_sequence_kwargs(cfg, raw, user_vocab, item_vocab), batch_format="pyarrow",
        batch_size=None)
    try:
        sequences.write_parquet(run.uri_of(tmp, "sequences"))
    except Exception as e:  # a DataError (e.g. a duplicate row) raised inside a task arrives wrapped
        err = unwrap_error(e)
        if isinstance(err, RayRecallError):
            raise err from None
        raise
    seq_ds = ray.data.read_parquet(run.uri_of(tmp, "sequences"))
    # One pass for the statistics and the samplers' popularity.
    found = _global_aggregate(seq_ds, Count(), Sum("length"), Sum("duplicates"), TrainPartItemCounts(len(item_vocab)))
    stats = {"users": int(found["count()"] or 0), "interactions": int(found["sum(length)"] or 0),
             "duplicates": int(found["sum(duplicates)"] or 0), "item_counts": found["item_counts"]}
    if stats["users"] == 0:
        raise _no_users_error(cfg, raw)
    log(f"[data] sequences: {stats['users']:,} users, {stats['interactions']:,} interactions "
        f"({time.perf_counter() - t0:.1f}s); writing splits")
    for split, count in _sample_counts(stats).items():
        if count == 0:
            _write_arrow(run, seq.SAMPLE_SCHEMA.empty_table(), tmp, split, "empty.parquet")  # Ray Data would write no file
            continue
        out = seq_ds.map_batches(seq.split_samples, fn_kwargs={"split": split}, batch_format="pyarrow", batch_size=None)
        # Rows in sequence-file order, not in whichever order the tasks finish: training reads
        # them in file order, so the same log gives the same batches (and the same model) on any cluster.
        out.context.execution_options.preserve_order = True
        out.write_parquet(run.uri_of(tmp, split))
    return user_vocab, item_vocab, stats


def _in_process(cfg: PipelineConfig, raw, run: RunDir, tmp: str, log) -> tuple[np.ndarray, np.ndarray, dict]:
    """`_on_ray_data` for a small log, in this process: the same functions, the same files.

    For a log that Ray Data prepares in ~10 s of fixed cost (scheduling its executions, starting the
    shuffle), this takes well under a second per million rows. Sequences are written one file per
    hash partition of Ray Data's keyed repartition, users sorted within each, and every split as one
    file in that order: what Ray Data writes for such a log, so training sees the same batches.
    """
    try:
        table = raw.local.read()
    except (OSError, pa.ArrowException) as e:
        raise _unreadable_error(raw, e) from None
    if table.num_rows == 0:
        raise _empty_error(raw)
    table = validate_and_normalize(table, raw.description)
    user_vocab = _sorted_vocab(pc.unique(table.column(USER)).to_pylist(), USER)
    item_vocab = _sorted_vocab(pc.unique(table.column(ITEM)).to_pylist(), ITEM)
    num_partitions = _partitions(cfg, table.num_rows)
    log(f"[data] {table.num_rows:,} rows, {len(user_vocab):,} users, {len(item_vocab):,} items")
    sequences = seq.build_sequences(encode_ids(table, user_vocab, item_vocab),
                                    **_sequence_kwargs(cfg, raw, user_vocab, item_vocab))
    del table
    if sequences.num_rows == 0:
        raise _no_users_error(cfg, raw)
    part = np.asarray(_hash_partition_vectorized(sequences.select(["user_idx"]), num_partitions), dtype=np.int64)
    sequences = sequences.take(np.argsort(part, kind="stable"))  # users stay sorted within a partition
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=num_partitions))])
    for p in range(num_partitions):
        if bounds[p + 1] > bounds[p]:
            _write_arrow(run, sequences.slice(bounds[p], bounds[p + 1] - bounds[p]), tmp, "sequences", f"part-{p:05d}.parquet")
    for split in ("train", "val", "test"):
        _write_arrow(run, seq.split_samples(sequences, split), tmp, split, "part-00000.parquet")
    lengths = sequences.column("length").to_numpy()
    return user_vocab, item_vocab, {
        "users": sequences.num_rows, "interactions": int(lengths.sum()),
        "duplicates": int(pc.sum(sequences.column("duplicates")).as_py() or 0),
        "item_counts": seq.train_part_item_counts(sequences.column("items"), len(item_vocab) + 1)}


def preprocess(cfg: PipelineConfig, run: RunDir, log=print) -> dict:
    """Run the data stage; returns the statistics written to data/meta.json.

    A log of at most `data.in_process_max_rows` interactions is prepared in this process with the
    same block functions and written in the same layout (`_in_process`); a larger one on Ray Data.
    """
    t0 = time.perf_counter()
    raw = load_source(cfg.data)
    in_process = raw.local is not None and raw.local.has_at_most(cfg.data.in_process_max_rows)
    log(f"[data] reading {raw.description}" + (" (in this process: a small log)" if in_process else ""))
    with run.staged_dir("data") as tmp:
        user_vocab, item_vocab, stats = (_in_process if in_process else _on_ray_data)(cfg, raw, run, tmp, log)
        num_seq_users, num_interactions, num_duplicates = stats["users"], stats["interactions"], stats["duplicates"]
        counts = _sample_counts(stats)
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
