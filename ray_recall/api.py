"""The notebook-facing data API: load MovieLens, build sequence features, draw word2vec-style negatives.

Everything here drives the same data stage the jobs run (`ray_recall.data.preprocess.preprocess`
through `ray_recall.pipeline.run_stage`) on a run directory, and hands back small handles on what
it wrote:

    df = load_movielens("ml-100k")                       # pandas, one row per rating
    data = generate_seq_features(df, item_col="movie_id", item_attribute_cols=["genre"])
    data.train, data.val, data.test                      # leave-last-out splits (SeqSplit)
    data.schema, data.num_items, data.encode_items(...)  # what models and lookups need

`ray_recall.data` re-exports the public names.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ray_recall.config import PipelineConfig
from ray_recall.errors import ConfigError, DataError
from ray_recall.storage import RunDir

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Handles on a preprocessed run


class SeqSplit:
    """One leave-last-out split of a `SeqData`: samples (user, pos, target) with history = the user's items before pos.

    `train` holds every earlier position of every user, `val` the second-to-last item, `test` the
    last one (one row per user). Rows are cheap: the history is cut from the user's sequence when
    a batch is built, so nothing here grows with max_len.
    """

    def __init__(self, data: "SeqData", name: str):
        self.data, self.name = data, name
        self._frame: pd.DataFrame | None = None

    def __len__(self) -> int:
        return int(self.data.meta["samples"][self.name])

    def __repr__(self) -> str:
        return f"SeqSplit({self.name!r}, {len(self):,} samples, run_dir={self.data.run_dir!r})"

    def _samples(self) -> pd.DataFrame:
        if self._frame is None:
            from ray_recall.data.preprocess import load_samples

            self._frame = load_samples(self.data.run, self.name)
        return self._frame

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dense user ids [S], positions [S], dense target items [S]), all int64; history = sequence[:pos]."""
        df = self._samples()
        return tuple(df[c].to_numpy().astype(np.int64) for c in ("user_idx", "pos", "target"))

    def to_pandas(self, original_ids: bool = False) -> pd.DataFrame:
        """Columns user_idx, pos, target (dense ids); with `original_ids` also user_id and item_id (the target's)."""
        df = self._samples().copy()
        if original_ids:
            df["user_id"] = self.data.decode_users(df["user_idx"].to_numpy())
            df["item_id"] = self.data.decode_items(df["target"].to_numpy())
        return df


class SeqData:
    """A preprocessed run directory, as returned by `generate_seq_features` (or reopened with `SeqData(run_dir)`).

    Attributes:
        run_dir: where the data stage wrote (local path or URI); training writes there too.
        config: the `PipelineConfig` the data was built with (its `data` section).
        meta: the data stage's statistics (data/meta.json).
        train, val, test: `SeqSplit` handles.
        num_users, num_items, max_len: sizes; dense ids are 1..num_users / 1..num_items, 0 = padding.
    Loaded on first use: `schema` (DataSchema), `sequences` (SequenceTable), `items` (DataFrame
    item_idx, raw_id, count, title), `user_ids` / `item_ids` (original ids in dense-id order),
    `item_count` ({original item id: training count}, most popular first).
    """

    def __init__(self, run_dir: str | os.PathLike):
        from ray_recall.data.preprocess import load_meta

        self.run = RunDir(str(run_dir))
        self.run_dir = self.run.uri
        self.meta = load_meta(self.run)
        self.config = _read_config(self.run)
        self.num_users = int(self.meta["num_users"])
        self.num_items = int(self.meta["num_items"])
        self.max_len = int(self.meta["max_len"])
        self.train, self.val, self.test = (SeqSplit(self, s) for s in SPLITS)
        self._cache: dict = {}

    def __repr__(self) -> str:
        s = self.meta["samples"]
        return (f"SeqData({self.num_users:,} users, {self.num_items:,} items, max_len={self.max_len}, "
                f"samples train/val/test={s['train']:,}/{s['val']:,}/{s['test']:,}, run_dir={self.run_dir!r})")

    def _cached(self, key: str, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    @property
    def schema(self):
        """`DataSchema`: sizes and per-id feature tables, what every model is built from."""
        from ray_recall.data.preprocess import load_schema

        return self._cached("schema", lambda: load_schema(self.run))

    @property
    def sequences(self):
        """`SequenceTable`: every user's time-ordered dense item ids (CSR arrays)."""
        from ray_recall.data.preprocess import load_sequences

        return self._cached("sequences", lambda: load_sequences(self.run, self.num_users))

    @property
    def items(self) -> pd.DataFrame:
        """One row per item: item_idx (dense), raw_id (original), count (training interactions), title."""
        from ray_recall.data.preprocess import load_items

        return self._cached("items", lambda: load_items(self.run))

    @property
    def user_ids(self) -> np.ndarray:
        """[num_users] original user ids; dense id d is element d - 1."""
        from ray_recall.data.preprocess import load_user_ids

        return self._cached("user_ids", lambda: load_user_ids(self.run))

    @property
    def item_ids(self) -> np.ndarray:
        """[num_items] original item ids; dense id d is element d - 1."""
        return self.items["raw_id"].to_numpy()

    @property
    def item_count(self) -> dict:
        """{original item id: interactions in the training part}, most popular first (the `negative_sample` input)."""
        def build():
            items = self.items.sort_values(["count", "item_idx"], ascending=[False, True], kind="stable")
            return dict(zip(_py_list(items["raw_id"].to_numpy()), items["count"].astype(int).tolist()))

        return self._cached("item_count", build)

    @property
    def user_features(self) -> list[str]:
        """Names of the user attributes the data holds (what `user_features=` of a model may name)."""
        return list(self.meta["user_features"])

    @property
    def item_features(self) -> list[str]:
        """Names of the item attributes the data holds (what `item_features=` of a model may name)."""
        return list(self.meta["item_features"])

    # ---- original id <-> dense id ---------------------------------------------------------
    def encode_users(self, ids) -> np.ndarray:
        """Original user ids [n] -> dense ids [n] int64 (0 where the id is not in the data)."""
        from ray_recall.data.vocab import lookup

        return lookup(np.asarray(self.user_ids), np.atleast_1d(np.asarray(ids)))

    def encode_items(self, ids) -> np.ndarray:
        """Original item ids [n] -> dense ids [n] int64 (0 where the id is not in the data)."""
        from ray_recall.data.vocab import lookup

        return lookup(np.asarray(self.item_ids), np.atleast_1d(np.asarray(ids)))

    def decode_users(self, dense) -> np.ndarray:
        """Dense user ids [n] (1..num_users) -> original ids [n]."""
        return np.asarray(self.user_ids)[_check_dense(dense, self.num_users, "user") - 1]

    def decode_items(self, dense) -> np.ndarray:
        """Dense item ids [n] (1..num_items) -> original ids [n]."""
        return np.asarray(self.item_ids)[_check_dense(dense, self.num_items, "item") - 1]

    def history(self, user_id) -> np.ndarray:
        """A user's whole known sequence as original item ids, oldest first (the test item is the last)."""
        d = int(self.encode_users([user_id])[0])
        if d == 0:
            raise DataError(f"user_id {user_id!r} is not in the data ({self.num_users:,} users)")
        return self.decode_items(self.sequences.sequence(d))

    def titles(self, item_ids) -> list[str]:
        """Original item ids [n] -> their titles (the data's title column, else the id as text)."""
        dense = self.encode_items(item_ids)
        titles = self.items["title"].to_numpy()
        return [str(titles[d - 1]) if d > 0 else str(i) for d, i in zip(dense, np.atleast_1d(np.asarray(item_ids)))]


def _check_dense(dense, n: int, side: str) -> np.ndarray:
    d = np.atleast_1d(np.asarray(dense, dtype=np.int64))
    if len(d) and (d.min() < 1 or d.max() > n):
        bad = d[(d < 1) | (d > n)][0]
        raise DataError(f"dense {side} id {bad} is outside 1..{n} (0 is padding / unknown)")
    return d


def _py_list(values: np.ndarray) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values]


def _read_config(run: RunDir) -> PipelineConfig:
    """The run's config.yaml (written by generate_seq_features, MatchTrainer.fit and run_pipeline)."""
    if not run.exists("config.yaml"):
        return PipelineConfig(run_dir=run.uri)
    raw = yaml.safe_load(run.read_bytes("config.yaml").decode()) or {}
    raw["run_dir"] = run.uri
    return PipelineConfig.from_dict(raw)


# --------------------------------------------------------------------------------------------
# Loading and preprocessing


def load_movielens(name: str = "ml-100k", *, sample_users: int | None = None, seed: int = 0) -> pd.DataFrame:
    """MovieLens ratings joined with movie and user attributes, one row per rating.

    `name`: "ml-100k" (bundled, nothing is downloaded) or the path of a GroupLens directory
    (ml-100k, ml-1m or ml-latest layout). `sample_users`: keep only that many users, drawn with
    `seed` (for quick tries and tests). Columns: user_id, movie_id, timestamp (seconds), title,
    genre ("|"-joined, e.g. "Action|Comedy"), year, and for ml-100k / ml-1m age, gender, occupation.
    Rows are ordered by (user_id, timestamp, movie_id).
    """
    from ray_recall.config import DataConfig
    from ray_recall.data.sources import ITEM, USER, load_source
    from ray_recall.pipeline import init_ray

    if name != "ml-100k" and not os.path.isdir(str(name)):
        raise DataError(f"load_movielens({name!r}): only 'ml-100k' is bundled; for another MovieLens download it from "
                        "https://grouplens.org/datasets/movielens/ and pass the directory it unpacks to")
    init_ray()
    raw = load_source(DataConfig(source="movielens", path=None if name == "ml-100k" else str(name)))
    df = raw.interactions.to_pandas()
    if sample_users is not None:
        users = np.unique(df[USER].to_numpy())
        if not 0 < sample_users <= len(users):
            raise ConfigError(f"sample_users={sample_users} must be in 1..{len(users)} (the users in {name})")
        keep = np.random.default_rng(seed).choice(users, sample_users, replace=False)
        df = df[df[USER].isin(keep)]
    if raw.items is not None:
        df = df.merge(raw.items, on=ITEM, how="left")
    if raw.users is not None:
        df = df.merge(raw.users, on=USER, how="left")
    df = df.rename(columns={ITEM: "movie_id"})
    return df.sort_values([USER, "timestamp", "movie_id"], kind="stable").reset_index(drop=True)


def generate_seq_features(data, *, user_col: str = "user_id", item_col: str = "item_id", time_col: str = "timestamp",
                          user_attribute_cols=(), item_attribute_cols=(), multi_value_cols=None,
                          multi_value_sep: str = "|", title_col: str | None = None, max_len: int | None = None,
                          min_user_interactions: int | None = None, num_partitions: int | None = None,
                          run_dir: str | os.PathLike | None = None, log=print) -> SeqData:
    """Run the data stage on an interaction log and return handles on its output.

    Args:
        data: a pandas DataFrame, a Ray Dataset, or the path / URI of a Parquet or CSV table, with one
            row per interaction; attribute columns ride along in the same rows (the last value per id wins).
        user_col, item_col, time_col: the id and timestamp columns (numeric or datetime timestamps).
        user_attribute_cols, item_attribute_cols: categorical attribute columns that models may use as
            features (`DSSM(user_features=...)`).
        multi_value_cols: attribute columns holding several values joined by `multi_value_sep`
            ("Action|Comedy"). None = every attribute column with a string value containing the separator.
        title_col: an item column shown beside recommendations (not a feature).
        max_len, min_user_interactions, num_partitions: as in the config's `data` section (None = its default:
            a history window of 50, users with fewer than 3 interactions dropped, one partition per million
            interactions and at least 4).
        run_dir: where to write (local path or URI); None = a new temporary directory.
        log: receives the stage's progress lines (None = silent).

    Returns a `SeqData`: splits by leave-last-out (per user, time-ordered: test = last item,
    val = second-to-last, train = every earlier position), vocabularies (original id <-> dense
    id 1..N), attribute tables and the training popularity of every item.
    """
    from ray_recall.pipeline import init_ray, run_stage

    init_ray(quiet=log is None)
    run = RunDir(str(run_dir) if run_dir is not None else tempfile.mkdtemp(prefix="ray_recall_"))
    if run.is_local:
        os.makedirs(run.root, exist_ok=True)
    user_attrs, item_attrs = _names("user_attribute_cols", user_attribute_cols), _names("item_attribute_cols", item_attribute_cols)
    needed = list(dict.fromkeys([user_col, item_col, time_col, *user_attrs, *item_attrs] + ([title_col] if title_col else [])))
    columns, sample = _columns_and_sample(data, user_attrs + item_attrs)
    for arg, value in [("user_col", user_col), ("item_col", item_col), ("time_col", time_col), ("title_col", title_col)] + \
            [("user_attribute_cols", c) for c in user_attrs] + [("item_attribute_cols", c) for c in item_attrs]:
        if value is not None and value not in columns:
            hint = difflib.get_close_matches(str(value), [str(c) for c in columns], n=1)
            raise ConfigError(f"generate_seq_features({arg}=...): {value!r} is not a column of the data"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; its columns are {list(columns)}")
    if multi_value_cols is None:
        multi = [c for c in user_attrs + item_attrs if _holds_separator(sample[c], multi_value_sep)]
    else:
        multi = _names("multi_value_cols", multi_value_cols)
        stray = [c for c in multi if c not in user_attrs + item_attrs]
        if stray:
            raise ConfigError(f"generate_seq_features(multi_value_cols=...): {stray[0]!r} is not one of the attribute "
                              f"columns {user_attrs + item_attrs}; add it to user_attribute_cols or item_attribute_cols")
    path = _stage_input(data, needed, run)
    data_cfg = {"source": "table", "path": path, "user_col": user_col, "item_col": item_col, "time_col": time_col,
                "user_feature_cols": user_attrs, "item_feature_cols": item_attrs, "multi_value_cols": multi,
                "multi_value_sep": multi_value_sep, "title_col": title_col}
    for key, value in (("max_len", max_len), ("min_user_interactions", min_user_interactions),
                       ("num_partitions", num_partitions)):
        if value is not None:
            data_cfg[key] = value
    cfg = PipelineConfig.from_dict({"run_dir": run.uri, "data": data_cfg})
    run.write_bytes(cfg.to_yaml().encode(), "config.yaml")
    run_stage(cfg, "preprocess", force=True, log=log or (lambda *_: None))
    return SeqData(run.uri)


def _names(arg: str, value) -> list[str]:
    if isinstance(value, str):
        raise ConfigError(f"generate_seq_features({arg}={value!r}) must be a list of column names, e.g. [{value!r}]")
    return list(value or ())


def _columns_and_sample(data, attrs: list[str]) -> tuple[list, pd.DataFrame]:
    """The input's column names and up to 10,000 rows of its attribute columns (to detect multi-valued ones)."""
    import ray.data

    if isinstance(data, pd.DataFrame):
        return list(data.columns), data[[c for c in attrs if c in data.columns]]
    if isinstance(data, ray.data.Dataset):
        ds = data
    elif isinstance(data, (str, os.PathLike)):
        from ray_recall.data.sources import _read_table_ds

        path = os.fspath(data)
        if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ("u.data", "ratings.dat", "ratings.csv")):
            raise ConfigError(f"{path} is a MovieLens directory: read it with load_movielens({path!r}) and pass the "
                              "DataFrame to generate_seq_features")
        ds = _read_table_ds(path, "auto")
    else:
        raise ConfigError(f"generate_seq_features takes a pandas DataFrame, a Ray Dataset or a table path, "
                          f"not {type(data).__name__}")
    schema = ds.schema()
    if schema is None:
        raise DataError("generate_seq_features: the input has no rows")
    present = [c for c in attrs if c in schema.names]
    sample = ds.select_columns(present).limit(10_000).to_pandas() if present else pd.DataFrame()
    return list(schema.names), sample


def _holds_separator(values: pd.Series, sep: str) -> bool:
    if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
        return False
    return bool(values.dropna().astype(str).str.contains(sep, regex=False).any())


def _stage_input(data, columns: list[str], run: RunDir) -> str:
    """Where the data stage reads from: the caller's table path as is, else a Parquet copy under <run>/input/."""
    import ray.data

    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, pd.DataFrame):
        try:
            table = pa.Table.from_pandas(data[columns], preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"generate_seq_features: a column cannot be stored as one type ({str(e).splitlines()[0]}); "
                            "make each column hold one type (e.g. df[col].astype(str))") from None
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        run.write_bytes(sink.getvalue().to_pybytes(), "input", "interactions.parquet")
        return run.uri_of("input", "interactions.parquet")
    if not isinstance(data, ray.data.Dataset):
        raise ConfigError(f"generate_seq_features takes a pandas DataFrame, a Ray Dataset or a table path, "
                          f"not {type(data).__name__}")
    if run.exists("input", "interactions"):
        run.fs.delete_dir(run.path("input", "interactions"))
    data.select_columns(columns).write_parquet(run.uri_of("input", "interactions"))
    return run.uri_of("input", "interactions")


# --------------------------------------------------------------------------------------------
# Negatives


def negative_sample(items_cnt_order, ratio: int = 5, method_id=1, seed: int | None = None) -> np.ndarray:
    """Draw `ratio` items, with replacement, from a popularity-shaped distribution.

    Args:
        items_cnt_order: {item: count} (a dict, Counter or pandas Series, e.g. `data.item_count`).
        ratio: how many items to draw.
        method_id: 0 = uniform, 1 = word2vec (count ** 0.75), 2 = log(1 + count); or the names
            "uniform", "word2vec", "log_popularity" (the samplers training uses, `train.sampler`).
        seed: seeds the draw (None = fresh randomness).

    Returns [ratio] items (the keys of `items_cnt_order`). Training draws its own negatives per batch
    and epoch, excluding each user's positives; this function is for inspection and custom loops.
    """
    from ray_recall.data.negatives import NegativeSampler

    if isinstance(items_cnt_order, pd.Series):
        items_cnt_order = items_cnt_order.to_dict()
    if not isinstance(items_cnt_order, Mapping) or not items_cnt_order:
        raise ConfigError("negative_sample(items_cnt_order=...) needs a non-empty {item: count} mapping, e.g. data.item_count")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, np.integer)) or ratio < 1:
        raise ConfigError(f"negative_sample(ratio={ratio!r}) must be a positive integer")
    keys = list(items_cnt_order)
    counts = np.concatenate([[0.0], np.asarray(list(items_cnt_order.values()), dtype=np.float64)])
    if (counts < 0).any():
        raise ConfigError("negative_sample: counts must be >= 0")
    try:
        sampler = NegativeSampler(counts, method_id)
    except ValueError as e:
        raise ConfigError(f"negative_sample(method_id={method_id!r}): {e}") from None
    dense = sampler.sample(np.zeros(1, dtype=np.int64), int(ratio), np.random.default_rng(seed))[0]
    values = np.empty(len(keys), dtype=object)
    values[:] = keys
    out = values[dense - 1]
    try:
        return out.astype(np.asarray(keys).dtype)
    except (TypeError, ValueError):
        return out
