"""The data stage: read -> vocabularies -> sequences -> splits -> popularity, written under <run>/data/.

Users are laid out in `data.num_partitions` hash partitions of the project's own hash
(`rundir.user_partition`): partition N's sequences and samples are data/sequences/part-N and
data/<split>/part-N, users sorted within each. Both paths below write exactly these files, by the
same function (`write_partitions`), so training reads the same blocks, in the same order, either way.

On Ray Data nothing collects the interaction log on the driver: the vocabularies (one row per
distinct id), per-item counts, per-partition statistics and the attribute tables are all it
gathers. The log is hash-partitioned by the users' partition and each block of whole partitions
builds its sequences and writes its files. A log of at most `data.in_process_max_rows` interactions
(2M by default) is prepared in the driver instead, skipping Ray Data's fixed cost; the driver's
memory is then bounded by that setting, not by the log.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.aggregate import AggregateFnV2, Count, Unique
from ray.data.context import ShuffleStrategy

from ray_recall.config import PipelineConfig
from ray_recall.errors import DataError, RayRecallError
from ray_recall.rundir import SPLITS, RunDir, user_partition
from ray_recall.runtime import configure_ray_data, unwrap_error
from ray_recall.stages.preprocess import sequences as seq
from ray_recall.stages.preprocess.encode import encode_features, encode_ids
from ray_recall.stages.preprocess.sources import ITEM, USER, RawData, load_source, validate_and_normalize
from ray_recall.vocab import lookup

INTERACTIONS_PER_PARTITION = 1_000_000  # data.num_partitions=None: one partition per this many rows
_STATS = pa.schema([("part", pa.int64()), ("users", pa.int64()), ("interactions", pa.int64()), ("duplicates", pa.int64())])


def write_partitions(sequences: pa.Table, num_partitions: int, run: RunDir, at: str) -> pa.Table:
    """Sequences (SEQ_SCHEMA, sorted by user, every user of each partition present) -> the files of their
    partitions (sequences and the three splits); returns one row of statistics per partition written."""
    users = sequences.column("user_idx").to_numpy()
    parts = user_partition(users, num_partitions)
    rows = []
    for p in np.unique(parts):
        part = sequences.filter(pa.array(parts == p))
        run.write_partition(int(p), part, {split: seq.split_samples(part, split) for split in SPLITS}, at=at)
        rows.append({"part": int(p), "users": part.num_rows, "interactions": int(pc.sum(part.column("length")).as_py()),
                     "duplicates": int(pc.sum(part.column("duplicates")).as_py() or 0)})
    return pa.Table.from_pylist(rows, schema=_STATS)


def _encode_block(batch: pa.Table, user_vocab, item_vocab, source: str, names: dict, num_partitions: int) -> pa.Table:
    encoded = encode_ids(validate_and_normalize(batch, source, names), user_vocab, item_vocab)
    return encoded.append_column("part", pa.array(user_partition(encoded.column("user_idx").to_numpy(), num_partitions)))


def _build_and_write(block: pa.Table, num_partitions: int, run_uri: str, at: str, seq_kwargs: dict) -> pa.Table:
    """A block holding every row of some partitions -> their sequences, written; their statistics."""
    return write_partitions(seq.build_sequences(block, **seq_kwargs), num_partitions, RunDir(run_uri), at)


def _validate_only(batch: pa.Table, source: str, names: dict) -> pa.Table:
    return validate_and_normalize(batch, source, names).select([USER, ITEM])


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


def _sequence_kwargs(cfg: PipelineConfig, raw: RawData, user_vocab: np.ndarray, item_vocab: np.ndarray) -> dict:
    kwargs = {"min_len": cfg.data.min_user_interactions, "duplicates": cfg.data.duplicates, "source": raw.description}
    if cfg.data.duplicates == "error":  # the vocabularies only name an offending row in the original ids
        kwargs.update(user_vocab=user_vocab, item_vocab=item_vocab)
    return kwargs


def _reraise_ours(e: BaseException) -> None:
    """A DataError or ConfigError raised inside a Ray task, re-raised as itself."""
    ours = unwrap_error(e, (RayRecallError,))
    if ours is not None:
        raise ours from None


def _unreadable_error(raw: RawData, e: BaseException) -> DataError:
    return DataError(f"{raw.description}: cannot read interactions: {str(e).strip().splitlines()[-1]}")


def _empty_error(raw: RawData) -> DataError:
    return DataError(f"{raw.description}: no interactions (the input is empty)")


def _no_users_error(cfg: PipelineConfig, raw: RawData) -> DataError:
    return DataError(f"{raw.description}: no user has {cfg.data.min_user_interactions} or more interactions "
                     "(data.min_user_interactions)")


def _sample_counts(stats: dict) -> dict:
    """Every kept user has >= 3 items: one validation and one test sample each, and a train sample
    at every position from 1 to n-3 (position 0 has no history), n - 3 in all."""
    return {"train": stats["interactions"] - 3 * stats["users"], "val": stats["users"], "test": stats["users"]}


def _totals(parts: pd.DataFrame) -> dict:
    return {k: int(parts[k].sum()) for k in ("users", "interactions", "duplicates")}


def _on_ray_data(cfg: PipelineConfig, raw: RawData, run: RunDir, tmp: str, log) -> tuple[np.ndarray, np.ndarray, dict]:
    """The partitions written under `tmp` by Ray Data; returns the vocabularies and the statistics."""
    t0 = time.perf_counter()
    try:
        validated = raw.interactions.map_batches(_validate_only,
                                                 fn_kwargs={"source": raw.description, "names": raw.column_names},
                                                 batch_format="pyarrow", batch_size=None)
        # One pass: both vocabularies and the row count (which sizes the partitions below).
        found = _global_aggregate(validated, Unique(USER), Unique(ITEM), Count())
    except Exception as e:  # Ray wraps errors raised in tasks
        _reraise_ours(e)
        raise _unreadable_error(raw, e) from None
    num_rows = int(found["count()"] or 0)
    if num_rows == 0:
        raise _empty_error(raw)
    user_vocab = _sorted_vocab(found[f"unique({USER})"], USER)
    item_vocab = _sorted_vocab(found[f"unique({ITEM})"], ITEM)
    n = _partitions(cfg, num_rows)
    log(f"[data] {num_rows:,} rows, {len(user_vocab):,} users, {len(item_vocab):,} items; "
        f"building sequences in {n} partitions")
    encoded = raw.interactions.map_batches(
        _encode_block, fn_kwargs={"user_vocab": user_vocab, "item_vocab": item_vocab, "source": raw.description,
                                  "names": raw.column_names, "num_partitions": n}, batch_format="pyarrow", batch_size=None)
    # Every row of a partition lands in one block, whichever others share it; duplicates are found there.
    written = encoded.repartition(n, keys=["part"]).map_batches(
        _build_and_write, fn_kwargs={"num_partitions": n, "run_uri": run.uri, "at": tmp,
                                     "seq_kwargs": _sequence_kwargs(cfg, raw, user_vocab, item_vocab)},
        batch_format="pyarrow", batch_size=None)
    try:
        parts = written.to_pandas()
    except Exception as e:
        _reraise_ours(e)
        raise
    if parts.empty or parts["users"].sum() == 0:
        raise _no_users_error(cfg, raw)
    stats = {**_totals(parts), "partitions": n}
    counts = _global_aggregate(ray.data.read_parquet(run.uri_of(tmp, "sequences")), TrainPartItemCounts(len(item_vocab)))
    stats["item_counts"] = counts["item_counts"]
    log(f"[data] sequences: {stats['users']:,} users, {stats['interactions']:,} interactions "
        f"({time.perf_counter() - t0:.1f}s)")
    return user_vocab, item_vocab, stats


def _in_process(cfg: PipelineConfig, raw: RawData, run: RunDir, tmp: str, log) -> tuple[np.ndarray, np.ndarray, dict]:
    """`_on_ray_data` for a small log, in this process: the same functions, the same files."""
    try:
        table = raw.local.read()
    except (OSError, pa.ArrowException) as e:
        raise _unreadable_error(raw, e) from None
    if table.num_rows == 0:
        raise _empty_error(raw)
    table = validate_and_normalize(table, raw.description, raw.column_names)
    user_vocab = _sorted_vocab(pc.unique(table.column(USER)).to_pylist(), USER)
    item_vocab = _sorted_vocab(pc.unique(table.column(ITEM)).to_pylist(), ITEM)
    n = _partitions(cfg, table.num_rows)
    log(f"[data] {table.num_rows:,} rows, {len(user_vocab):,} users, {len(item_vocab):,} items")
    sequences = seq.build_sequences(encode_ids(table, user_vocab, item_vocab),
                                    **_sequence_kwargs(cfg, raw, user_vocab, item_vocab))
    del table
    if sequences.num_rows == 0:
        raise _no_users_error(cfg, raw)
    stats = {**_totals(write_partitions(sequences, n, run, tmp).to_pandas()), "partitions": n}
    stats["item_counts"] = seq.train_part_item_counts(sequences.column("items"), len(item_vocab) + 1)
    return user_vocab, item_vocab, stats


def preprocess(cfg: PipelineConfig, run: RunDir, log=print) -> dict:
    """Run the data stage; returns the statistics written to data/meta.json.

    A log of at most `data.in_process_max_rows` interactions is prepared in this process with the
    same block functions and written in the same layout (`_in_process`); a larger one on Ray Data.
    """
    t0 = time.perf_counter()
    configure_ray_data()
    raw = load_source(cfg.data)
    in_process = raw.local is not None and raw.local.has_at_most(cfg.data.in_process_max_rows)
    log(f"[data] reading {raw.description}" + (" (in this process: a small log)" if in_process else ""))
    with run.staged_dir("data") as tmp:
        user_vocab, item_vocab, stats = (_in_process if in_process else _on_ray_data)(cfg, raw, run, tmp, log)
        counts = _sample_counts(stats)
        user_codes, user_values = encode_features(raw.users, USER, user_vocab, raw.user_feature_cols, raw.multi_value_cols,
                                                  raw.multi_value_sep)
        item_codes, item_values = encode_features(raw.items, ITEM, item_vocab, raw.item_feature_cols, raw.multi_value_cols,
                                                  raw.multi_value_sep)
        users_tbl = {"user_idx": np.arange(1, len(user_vocab) + 1), "raw_id": user_vocab}
        users_tbl.update({f"f_{k}": list(v[1:]) if v.ndim == 2 else v[1:] for k, v in user_codes.items()})
        items_tbl = {"item_idx": np.arange(1, len(item_vocab) + 1), "raw_id": item_vocab, "count": stats["item_counts"][1:],
                     "title": _titles(raw, item_vocab)}
        items_tbl.update({f"f_{k}": list(v[1:]) if v.ndim == 2 else v[1:] for k, v in item_codes.items()})
        run.write_vocabularies(pa.Table.from_pandas(pd.DataFrame(users_tbl), preserve_index=False),
                               pa.Table.from_pandas(pd.DataFrame(items_tbl), preserve_index=False), at=tmp)
        meta = {
            "source": raw.description,
            "num_users": len(user_vocab),
            "num_items": len(item_vocab),
            "max_len": cfg.data.max_len,
            "num_partitions": stats["partitions"],
            "num_interactions": stats["interactions"],
            "num_sequence_users": stats["users"],
            "dropped_users": int(len(user_vocab) - stats["users"]),
            "duplicates": cfg.data.duplicates,
            "duplicate_rows_dropped": stats["duplicates"],
            "min_user_interactions": cfg.data.min_user_interactions,
            "samples": counts,
            "user_features": {k: {"values": v, "multi": k in raw.multi_value_cols} for k, v in user_values.items()},
            "item_features": {k: {"values": v, "multi": k in raw.multi_value_cols} for k, v in item_values.items()},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        run.write_meta(meta, at=tmp)
    log(f"[data] {stats['interactions']:,} interactions, {stats['users']:,} users kept "
        f"({meta['dropped_users']:,} dropped with < {cfg.data.min_user_interactions}), "
        f"{stats['duplicates']:,} duplicate rows dropped, samples {counts} in {meta['seconds']:.1f}s")
    return meta


def _titles(raw: RawData, item_vocab: np.ndarray) -> list[str]:
    if raw.items is None or not raw.title_col or raw.title_col not in raw.items.columns:
        return [str(v) for v in item_vocab]
    titles = np.array([str(v) for v in item_vocab], dtype=object)
    dense = lookup(item_vocab, raw.items[ITEM].to_numpy())
    ok = dense > 0
    titles[dense[ok] - 1] = raw.items[raw.title_col].astype(str).to_numpy()[ok]
    return list(titles)
