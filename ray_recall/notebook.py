"""The notebook face: the seed-style API over the pipeline's own stages, in one module.

    df = load_movielens("ml-100k")                               # pandas, one row per rating
    data = generate_seq_features(df, item_col="movie_id", ...)   # the data stage -> SeqData
    model = DSSM(user_features=["age"], ...)                     # a ModelSpec: no data yet
    model = MatchTrainer(model, mode=2, n_epochs=10).fit(data.train, data.val)   # the train stage (Ray Train)
    evaluate_model(model, data.test)                             # the evaluate stage's exact ranking, in-process
    data.item_vectors(model), data.user_vector(model, user_id=1) # vectors, in original ids

Every call drives the same stages the jobs run (through `ray_recall.pipeline`) on a run directory,
so the CLI, the jobs and the endpoint can take over from what a notebook wrote. The public import
paths are `ray_recall.data` (data handles and negatives), `ray_recall.train` (MatchTrainer) and
`ray_recall.evaluate` (the evaluate_* functions), which re-export from here.
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
import torch

from ray_recall import batch as B
from ray_recall.batch import pad_histories
from ray_recall.config import MODE_ALIASES, MODES, DataConfig, EvalConfig, PipelineConfig, TrainConfig, resolve_alias
from ray_recall.errors import ConfigError, DataError
from ray_recall.metrics import metrics_from_ranks
from ray_recall.models import ModelSpec, RecallModel, available_models
from ray_recall.negatives import NegativeSampler
from ray_recall.pipeline import run_stage
from ray_recall.ranking import embed_all_items, rank_targets
from ray_recall.rundir import SPLITS, RunDir
from ray_recall.runtime import init_ray
from ray_recall.stages.preprocess.sources import ITEM, USER, load_source, read_table_dataset


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
            self._frame = self.data.run.read_split(self.name)
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
        self.run = RunDir(str(run_dir))
        self.run_dir = self.run.uri
        self.meta = self.run.read_meta()
        self.config = self.run.read_config() or PipelineConfig(run_dir=self.run.uri)
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
        return self._cached("schema", self.run.read_schema)

    @property
    def sequences(self):
        """`SequenceTable`: every user's time-ordered dense item ids (CSR arrays)."""
        return self._cached("sequences", lambda: self.run.read_sequences(self.num_users))

    @property
    def items(self) -> pd.DataFrame:
        """One row per item: item_idx (dense), raw_id (original), count (training interactions), title."""
        return self._cached("items", self.run.read_items)

    @property
    def user_vocab(self):
        return self._cached("user_vocab", self.run.read_user_vocab)

    @property
    def item_vocab(self):
        return self._cached("item_vocab", self.run.read_item_vocab)

    @property
    def user_ids(self) -> np.ndarray:
        """[num_users] original user ids; dense id d is element d - 1."""
        return self.user_vocab.ids

    @property
    def item_ids(self) -> np.ndarray:
        """[num_items] original item ids; dense id d is element d - 1."""
        return self.item_vocab.ids

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
        return self.user_vocab.encode(ids)

    def encode_items(self, ids) -> np.ndarray:
        """Original item ids [n] -> dense ids [n] int64 (0 where the id is not in the data)."""
        return self.item_vocab.encode(ids)

    def decode_users(self, dense) -> np.ndarray:
        """Dense user ids [n] (1..num_users) -> original ids [n]."""
        return self.user_vocab.decode(dense)

    def decode_items(self, dense) -> np.ndarray:
        """Dense item ids [n] (1..num_items) -> original ids [n]."""
        return self.item_vocab.decode(dense)

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

    # ---- vectors of a model trained on this data --------------------------------------------
    def item_vectors(self, model: RecallModel) -> np.ndarray:
        """[num_items, D] float32 item vectors of `model` (eval mode); row j is dense item j + 1, i.e. `item_ids[j]`."""
        with _eval_mode(self._check_model(model)):
            return embed_all_items(model).cpu().numpy()

    def user_vectors(self, model: RecallModel, user_ids) -> np.ndarray:
        """Original user ids [U] -> [U, D] float32 ([U, K, D] for multi-interest models), eval mode.

        Each user's history is their whole known sequence (train, validation and test items), as the
        embedding job and the endpoint use it.
        """
        ids = np.atleast_1d(np.asarray(user_ids))
        dense = self.encode_users(ids)
        if (dense == 0).any():
            raise DataError(f"user_id {ids[dense == 0][0]!r} is not in the data ({self.num_users:,} users, e.g. "
                            f"{self.user_vocab.first(3)})")
        seqs = self.sequences
        return _encode_users(self._check_model(model), B.user_batch(seqs, dense, seqs.length(dense), model.max_len))

    def user_vector(self, model: RecallModel, user_id=None, *, history=None) -> np.ndarray:
        """[D] float32 ([K, D] for multi-interest models) for one user, eval mode.

        `user_id`: an original user id of the data (history = their whole known sequence).
        `history`: original item ids, oldest first, for a user the data does not know (items outside
        the data are skipped; the last max_len are used). Give one of the two, or both to score a
        known user against a different history.
        """
        if history is None:
            if user_id is None:
                raise ConfigError("user_vector needs user_id= or history=")
            return self.user_vectors(model, [user_id])[0]
        items = self.encode_items(np.asarray(list(history)))
        user = 0 if user_id is None else int(self.encode_users([user_id])[0])
        batch = pad_histories([items[items > 0]], self._check_model(model).max_len, users=np.array([user]))
        return _encode_users(model, batch)[0]

    def _check_model(self, model) -> RecallModel:
        if isinstance(model, ModelSpec):
            raise ConfigError(f"{model!r} is a spec, not a trained model: train it with MatchTrainer(model, ...)"
                              ".fit(data.train), or build it for this data with model.bind(data)")
        if not isinstance(model, RecallModel):
            raise ConfigError(f"expected a model from ray_recall.models, got {type(model).__name__}")
        if (model.num_users, model.num_items, model.max_len) != (self.num_users, self.num_items, self.max_len):
            raise DataError(f"{type(model).__name__} was built for {model.num_users} users, {model.num_items} items and "
                            f"max_len {model.max_len}, but this data has {self.num_users}, {self.num_items} and "
                            f"{self.max_len}")
        return model


class _eval_mode:
    """Context manager: the model in eval mode inside, its previous mode restored after."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _encode_users(model: RecallModel, batch: dict[str, torch.Tensor]) -> np.ndarray:
    device = next(model.parameters()).device
    with _eval_mode(model), torch.no_grad():
        return model.encode_user({k: v.to(device) for k, v in batch.items()}).cpu().numpy()


def _py_list(values: np.ndarray) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values]


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
        user_col, item_col, time_col: the id and timestamp columns (timestamps: numbers in seconds, date-times, or
            ISO 8601 strings, UTC without a zone).
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
    run.write_config(cfg)
    try:
        run_stage(cfg, "preprocess", force=True, log=log or (lambda *_: None))
    except DataError as e:  # in this function's terms: its arguments, and the caller's data rather than our copy of it
        message = str(e)
        if not isinstance(data, (str, os.PathLike)):  # a DataFrame or Dataset, staged as a Parquet copy
            message = message.replace(f"table {path}", f"generate_seq_features(data=<{type(data).__name__}>)")
        for arg in ("user_col", "item_col", "time_col"):
            message = message.replace(f"(data.{arg})", f"({arg}=)")
        raise DataError(message) from None
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
        path = os.fspath(data)
        if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ("u.data", "ratings.dat", "ratings.csv")):
            raise ConfigError(f"{path} is a MovieLens directory: read it with load_movielens({path!r}) and pass the "
                              "DataFrame to generate_seq_features")
        ds = read_table_dataset(path, "auto")
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
    run.delete_dir("input", "interactions")
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


# --------------------------------------------------------------------------------------------
# Training


# MatchTrainer arguments that are config fields under another name.
_RENAMED = {"n_epochs": "epochs"}
_OPTIMIZER_KEYS = ("lr", "weight_decay")  # Adam's settings in TrainConfig


class MatchTrainer:
    """Trains a recall model with the pipeline's train stage (Ray Train `TorchTrainer`, DDP over `num_workers`).

        model = DSSM(user_features=["age"], hidden_units=[64, 32])      # a ModelSpec: no data yet
        trainer = MatchTrainer(model, mode=2, optimizer_params={"lr": 1e-3}, n_epochs=10, num_workers=2)
        model = trainer.fit(data.train, data.val)                        # the trained DSSM, best epoch's weights

    The trainer maps its arguments onto a `PipelineConfig` (the model's registry name and hyperparameters
    as the `model` section) and runs the pipeline's train stage on the data's run directory, exactly as
    `ray-recall train` would; the run directory then holds the usual model/model.pt, and `trainer.config`
    continues with the other stages (`run_pipeline(trainer.config, stages=("embed", "index", "evaluate"))`).

    Args:
        model: a `ModelSpec` (a model class called without data) or a model already built for the data.
        mode: 0 / "pointwise" (BCE), 1 / "pairwise" (BPR), 2 / "listwise" (sampled softmax).
        optimizer_params: Adam settings: {"lr": ..., "weight_decay": ...}.
        n_epochs: passes over the training samples; the epoch with the best validation metric is kept.
        temperature: logits (point- and list-wise) and BPR margins (pair-wise) are divided by it.
        num_workers: Ray Train workers (DDP; gloo on CPU, NCCL with use_gpu).
        batch_size: global batch size (each worker takes batch_size / num_workers).
        num_negatives: sampled negatives per positive.
        sampler: negative distribution, 0 / "uniform", 1 / "word2vec", 2 / "log_popularity".
        cpus_per_worker: logical CPUs per worker; None = at most 1, leaving one CPU of the cluster free
            for Ray Data's read tasks.
        seed: seeds initialization, shuffling and negatives.
        log: receives progress lines (None = silent).
        **train_options: any other `TrainConfig` field (in_batch_negatives, embedding_l2, use_gpu, val_k, ...).
    Arguments left at None take the `TrainConfig` defaults, so a MatchTrainer and a YAML config that
    say the same things train the same model.

    Attributes after `fit`: `model` (the trained model), `config` (the PipelineConfig that ran),
    `summary` (the train stage's summary: best_epoch, per-epoch history of loss and validation metrics, timings).
    """

    def __init__(self, model, mode=None, optimizer_params: dict | None = None, n_epochs: int | None = None,
                 temperature: float | None = None, num_workers: int | None = None, batch_size: int | None = None,
                 num_negatives: int | None = None, sampler=None, cpus_per_worker: float | None = None,
                 seed: int | None = None, log=print, **train_options):
        if isinstance(model, RecallModel):
            if model.spec is None:
                raise ConfigError(f"{type(model).__name__} is not a registered model: decorate it with "
                                  "@register_model('<name>') so that the Ray Train workers can build it by name")
            self.spec = model.spec
        elif isinstance(model, ModelSpec):
            self.spec = model
        else:
            raise ConfigError(f"MatchTrainer(model=...) takes a model from ray_recall.models ({available_models()}), "
                              f"not {type(model).__name__}")
        self.model = model if isinstance(model, RecallModel) else None
        self.log = log
        options = {"mode": mode, "n_epochs": n_epochs, "temperature": temperature, "num_workers": num_workers,
                   "batch_size": batch_size, "num_negatives": num_negatives, "sampler": sampler,
                   "cpus_per_worker": cpus_per_worker, "seed": seed, **train_options}
        fields = set(TrainConfig.model_fields)
        allowed = sorted((fields - set(_RENAMED.values()) - set(_OPTIMIZER_KEYS)) | set(_RENAMED))
        unknown = sorted(k for k in train_options if k not in allowed)
        if unknown:
            key = unknown[0]
            renamed = {v: k for k, v in _RENAMED.items()}
            hint = (f" (MatchTrainer calls it {renamed[key]!r})" if key in renamed else
                    f" (pass it as optimizer_params={{{key!r}: ...}})" if key in _OPTIMIZER_KEYS else "")
            raise ConfigError(f"MatchTrainer has no option {key!r}{hint}; options: {allowed}")
        for key, value in (optimizer_params or {}).items():
            if key not in _OPTIMIZER_KEYS:
                raise ConfigError(f"optimizer_params={{{key!r}: ...}} is not an Adam setting the trainer takes; "
                                  f"use {list(_OPTIMIZER_KEYS)}")
            options[key] = value
        self._train = {_RENAMED.get(k, k): v for k, v in options.items() if v is not None}
        if "mode" in self._train:
            self._train["mode"] = _check_mode(self.spec.model_class, self._train["mode"])
        # Validate every option now (cpus_per_worker may still be open): errors before any work starts.
        TrainConfig(**self._train)
        self.config: PipelineConfig | None = None
        self.summary: dict | None = None

    def pipeline_config(self, data: "SeqData") -> PipelineConfig:
        """The PipelineConfig `fit` runs for `data` (a SeqData): its data section and run_dir, this trainer's
        model and train sections, defaults elsewhere."""
        train = dict(self._train)
        if "cpus_per_worker" not in train:
            train["cpus_per_worker"] = _default_cpus_per_worker(train.get("num_workers", TrainConfig().num_workers))
        raw = data.config.to_dict()
        raw.update(run_dir=data.run_dir, train=train, model=self.spec.config().model_dump(mode="json"))
        return PipelineConfig.from_dict(raw)

    def fit(self, train, val=None) -> RecallModel:
        """Train on `train` (data.train of a SeqData, or the SeqData itself); returns the trained model, in eval mode.

        `val` may be given as data.val for symmetry; validation always uses the run's val split
        (Recall@val_k each epoch), which picks the best epoch. The model is built for the data first
        (so a wrong feature name or item_num fails before Ray starts training), then trained from the
        seeded initialization by the train stage, and holds the best epoch's weights. A model given
        already built is that same object, updated in place.
        """
        data = _data_of(train, "train")
        if val is not None and (_data_of(val, "val") is not data or getattr(val, "name", "val") != "val"):
            raise ConfigError("fit(train, val): val must be the val split of the same data as train (data.val); "
                              "validation runs on the data's own leave-last-out val split")
        model = self.model if self.model is not None else self.spec.bind(data)
        data._check_model(model)
        init_ray(quiet=self.log is None)
        cfg = self.pipeline_config(data)
        data.run.write_config(cfg)
        self.summary = run_stage(cfg, "train", force=True, log=self.log or (lambda *_: None))
        self.config = cfg
        model.load_state_dict(data.run.read_model().state_dict)
        self.model = model.eval()
        return self.model


def _check_mode(cls, mode) -> str:
    """An integer alias or a name -> the mode's name, if the model class trains in it."""
    name = resolve_alias(mode, MODE_ALIASES)
    if name not in MODES:
        raise ConfigError(f"mode={mode!r} is not a training mode; use 0 (pointwise), 1 (pairwise) or 2 (listwise)")
    if name not in cls.modes:
        ok = ", ".join(f"{MODES.index(m)} ({m})" for m in cls.modes)
        raise ConfigError(f"{cls.__name__} cannot train in mode={mode!r} ({name}); it trains in mode {ok}: pass one of those")
    return name


def _default_cpus_per_worker(num_workers: int) -> float:
    """At most one CPU per worker, leaving one whole CPU free: Ray Data's read tasks each ask for one, and a
    fit whose workers hold every CPU waits for them forever."""
    import math

    import ray

    cpus = ray.cluster_resources().get("CPU", 0) if ray.is_initialized() else 0
    if cpus <= 0:
        return TrainConfig().cpus_per_worker
    return min(1.0, math.floor(100 * max(cpus - 1, cpus / 2) / num_workers) / 100)


def _data_of(split, arg: str) -> SeqData:
    """The SeqData behind a SeqSplit (or a SeqData itself)."""
    if isinstance(split, SeqSplit):
        if arg == "train" and split.name != "train":
            raise ConfigError(f"fit(train=...) got the {split.name!r} split; pass data.train")
        return split.data
    if isinstance(split, SeqData):
        return split
    raise ConfigError(f"fit({arg}=...) takes data.{arg} from generate_seq_features (a SeqSplit), "
                      f"not {type(split).__name__}")


# --------------------------------------------------------------------------------------------
# Evaluation: the evaluate stage's ranking, in-process, for a model object


def evaluate_model(model, split, ks=None, mask_seen: bool | None = None, batch_size: int | None = None) -> dict[str, float]:
    """Recall / HitRate / NDCG / MRR at every K of `model` on `split`, by exact full ranking, in-process.

    Args:
        model: a model trained on the split's data (MatchTrainer.fit's result, or `spec.bind(data)`).
        split: `data.test` or `data.val` (a SeqSplit; a SeqData means its test split).
        ks: cut-offs (None = the eval config's, 10 and 50).
        mask_seen: exclude items the user interacted with before the target (None = the eval config's, True).
        batch_size: users scored per batch.
    Returns {"recall@K": ..., "hit_rate@K": ..., "ndcg@K": ..., "mrr@K": ...}: the numbers the evaluate
    stage reports for the same model and split (the same `rank_targets` and `metrics_from_ranks`).
    """
    defaults = EvalConfig()
    ks = tuple(defaults.ks if ks is None else ([ks] if isinstance(ks, int) else ks))
    EvalConfig(ks=ks)  # validates the cut-offs
    ranks = _model_ranks(model, split, defaults.mask_seen if mask_seen is None else mask_seen,
                         batch_size or defaults.batch_size)
    return metrics_from_ranks(ranks, ks)


def evaluate_recall(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """Recall@k of `model` on `split` (see `evaluate_model`)."""
    return evaluate_model(model, split, [k], mask_seen)[f"recall@{k}"]


def evaluate_hit_rate(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """HitRate@k of `model` on `split` (equal to Recall@k with one held-out item per user)."""
    return evaluate_model(model, split, [k], mask_seen)[f"hit_rate@{k}"]


def evaluate_ndcg(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """NDCG@k of `model` on `split` (see `evaluate_model`)."""
    return evaluate_model(model, split, [k], mask_seen)[f"ndcg@{k}"]


def evaluate_mrr(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """MRR@k of `model` on `split` (see `evaluate_model`)."""
    return evaluate_model(model, split, [k], mask_seen)[f"mrr@{k}"]


def _model_ranks(model, split, mask_seen: bool, batch_size: int) -> np.ndarray:
    """0-based rank of each sample's target among all items, [S]."""
    if isinstance(split, SeqData):
        split = split.test
    if not isinstance(split, SeqSplit):
        raise DataError(f"evaluate: split must be data.test or data.val from generate_seq_features, not {type(split).__name__}")
    data = split.data
    data._check_model(model)
    users, pos, targets = split.arrays()
    with _eval_mode(model):
        item_vecs = embed_all_items(model)
        return rank_targets(model, data.sequences, item_vecs, users, pos, targets, data.max_len, mask_seen,
                            batch_size)["model"]
