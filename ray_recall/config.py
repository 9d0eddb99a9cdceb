"""Typed, frozen, validated configuration (pydantic).

Every stage takes one `PipelineConfig`, built from YAML, a dict or keyword arguments. An unknown
key, a wrong type or an impossible value raises `ConfigError` naming the key path and what is
allowed, before any work starts. The seed API's integer shorthands (`mode: 0/1/2`, `sampler:
0/1/2`) are resolved here, once. `docs/config.md` is generated from this file
(`python -m ray_recall.config > docs/config.md`); each field's docstring is its description.

The model's name and `model.params` are checked against the model's constructor by
`ray_recall.models.check_model_config`, which every entry point calls before any stage runs
(this module knows nothing of the models, so that the models may depend on it).
"""

from __future__ import annotations

import hashlib
import json
import sys
import typing
from typing import Annotated, Any, ClassVar, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import field_validator, model_validator

from ray_recall.errors import ConfigError

MODES = ("pointwise", "pairwise", "listwise")
MODE_ALIASES = {0: "pointwise", 1: "pairwise", 2: "listwise"}
SAMPLERS = ("uniform", "word2vec", "log_popularity")
SAMPLER_ALIASES = {0: "uniform", 1: "word2vec", 2: "log_popularity"}

Mode = Literal["pointwise", "pairwise", "listwise"]
Sampler = Literal["uniform", "word2vec", "log_popularity"]
Number = Annotated[float, Strict()]  # an int or a float; not a bool or a string
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveNumber = Annotated[Number, Field(gt=0)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]


def resolve_alias(value: Any, aliases: dict[int, str]) -> Any:
    """An integer shorthand (0/1/2) -> its name; anything else unchanged (a bool is not an integer here)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return aliases.get(value, value)
    return value


def resolve_mode(value: Any) -> str:
    """A training mode by name or seed alias (0 | 1 | 2) -> its name; ConfigError if it is neither."""
    name = resolve_alias(value, MODE_ALIASES)
    if name not in MODES:
        raise ConfigError(f"train.mode={value!r} is not allowed; choose one of {list(MODES)} or 0/1/2")
    return name


def resolve_sampler(value: Any) -> str:
    """A negative sampler by name or seed alias (0 | 1 | 2) -> its name; ConfigError if it is neither."""
    name = resolve_alias(value, SAMPLER_ALIASES)
    if name not in SAMPLERS:
        raise ConfigError(f"train.sampler={value!r} is not allowed; choose one of {list(SAMPLERS)} or 0/1/2")
    return name


class _Section(BaseModel):
    """A config section: frozen, unknown keys rejected, every error a `ConfigError` naming the key path."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    _path: ClassVar[str] = ""  # the section's key path in a PipelineConfig ("train", "data.synthetic", ...)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(describe(e, type(self), self._path)) from None

    @classmethod
    def from_dict(cls, raw: Any):
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{cls._path or 'config'} must be a mapping, got {type(raw).__name__}")
        return cls(**raw)


class SyntheticConfig(_Section):
    """Seeded synthetic log with planted structure (see `ray_recall.stages.preprocess.synthetic`)."""

    _path: ClassVar[str] = "data.synthetic"

    num_users: PositiveInt = 2000
    """distinct users"""
    num_items: PositiveInt = 1000
    """distinct items"""
    num_groups: PositiveInt = 8
    """latent taste groups; each user belongs to one"""
    mean_length: PositiveNumber = 30.0
    """mean interactions per user (geometric-ish, at least 5)"""
    zipf_exponent: Number = 1.0
    """item popularity ~ rank^-exponent within a group"""
    group_affinity: Annotated[Number, Field(ge=0, le=1)] = 0.85
    """probability that an interaction comes from the user's own group"""
    seed: StrictInt = 0
    """generator seed"""


class DataConfig(_Section):
    """Where interactions come from and how sequences are built."""

    _path: ClassVar[str] = "data"

    source: Literal["movielens", "table", "synthetic"] = "movielens"
    """movielens | table | synthetic"""
    path: Optional[StrictStr] = None
    """movielens: None = the bundled ml-100k, else a GroupLens directory; table: a file, directory or URI"""
    format: Literal["auto", "parquet", "csv", "tsv", "atomic"] = "auto"
    """table source: parquet | csv | tsv (tab-separated, a header line) | atomic (a RecBole atomic file: .inter, .user,
    .item); auto = by the file's suffix (.csv, .tsv/.tab, .inter/.user/.item), else parquet"""
    user_col: StrictStr = "user_id"
    """column holding user ids (table source)"""
    item_col: StrictStr = "item_id"
    """column holding item ids (table source)"""
    time_col: StrictStr = "timestamp"
    """column holding the timestamps (table source): numbers (seconds), date-times, or ISO 8601 strings (UTC without a
    zone)"""
    user_feature_cols: tuple[StrictStr, ...] = ()
    """user attribute columns used as features"""
    item_feature_cols: tuple[StrictStr, ...] = ()
    """item attribute columns used as features"""
    multi_value_cols: tuple[StrictStr, ...] = ()
    """feature columns holding several values joined by multi_value_sep"""
    multi_value_sep: StrictStr = "|"
    """separator inside multi-valued feature strings"""
    user_table: Optional[StrictStr] = None
    """table source: an optional separate user attribute table (keyed by user_col)"""
    item_table: Optional[StrictStr] = None
    """table source: an optional separate item attribute table (keyed by item_col)"""
    title_col: Optional[StrictStr] = None
    """item column shown beside recommendations (not a feature)"""
    max_len: PositiveInt = 50
    """history window: the most recent max_len items before a target"""
    min_user_interactions: Annotated[StrictInt, Field(ge=3)] = 3
    """users with fewer are dropped (and counted); 3 = one train, one validation and one test item each"""
    num_partitions: Optional[PositiveInt] = None
    """hash partitions of the users (one sequence file each); None = one per million interactions, at least 4"""
    in_process_max_rows: NonNegativeInt = 2_000_000
    """logs of at most this many interactions are prepared in the driver's process (same functions and files as on
    Ray Data, without its fixed cost); larger ones on Ray Data. 0 = always Ray Data"""
    duplicates: Literal["drop", "error"] = "drop"
    """rows repeating a (user, item, timestamp): drop (counted in data/meta.json) | error"""
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    """the generator's settings, used when source == synthetic"""

    @field_validator("user_feature_cols", "item_feature_cols", "multi_value_cols", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value):
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.source == "table" and not self.path:
            raise ValueError("data.path is required when data.source='table'")
        unknown = set(self.multi_value_cols) - set(self.user_feature_cols) - set(self.item_feature_cols)
        if unknown:
            raise ValueError(f"data.multi_value_cols names {sorted(unknown)}, which are not feature columns")
        return self


class ModelConfig(_Section):
    """Which model and its hyperparameters (passed to the model's constructor)."""

    _path: ClassVar[str] = "model"

    name: StrictStr = "dssm"
    """registry name; see ray_recall.models.available_models()"""
    embedding_dim: PositiveInt = 64
    """output embedding size D"""
    params: dict[StrictStr, Any] = Field(default_factory=dict)
    """model-specific keyword arguments, checked against the model's constructor before any stage runs"""


class TrainConfig(_Section):
    """Objective, sampling and the Ray Train run."""

    _path: ClassVar[str] = "train"

    mode: Mode = "listwise"
    """pointwise | pairwise | listwise (aliases 0 / 1 / 2)"""
    targets: Literal["auto", "all_positions", "per_prefix"] = "auto"
    """all_positions: a causal model (sasrec, gru4rec, hstu, comirec) scores every position of a window of the user's
    sequence in one pass; per_prefix: one history window per target; auto: all_positions for causal models"""
    window: Literal["tile", "shifted", "random", "last"] = "tile"
    """all_positions: how a user's train part is cut into windows of max_len: tile (every target once per epoch)
    | shifted (every target once per epoch, the tiling's boundaries moved by a fresh random offset each epoch)
    | random (one window per user, a fresh start each epoch) | last (the most recent window only)"""
    length_buckets: bool = False
    """all_positions: batch windows of about the same length (sorted within a chunk of ~16k windows, batches in
    random order), so that cutting each batch to its longest window saves compute; off by default: SASRec on
    MovieLens-100K reached validation Recall@10 0.2375 with it, 0.2524 without (benchmarks/scale_train.md)"""
    pack: StrictBool = True
    """all_positions, models that can (sasrec, hstu, comirec): lay each batch's windows one after another into shared rows,
    each attending only to itself, so that a step computes few padding positions (the same windows a batch, the
    same states; a row's negatives are shared by its windows). Not with in-batch or shared negatives, nor
    length_buckets (then off)"""
    softmax: Literal["sampled", "full"] = "sampled"
    """list-wise: sampled (against sampled and/or in-batch negatives) | full (the exact softmax over every item,
    in chunks of bounded memory; no negatives are sampled)"""
    temperature: PositiveNumber = 0.1
    """logits (and BPR margins) are divided by this"""
    num_negatives: NonNegativeInt = 20
    """sampled negatives per positive (all_positions: per window, shared by its positions; with
    shared_negatives: per step, shared by every target of the batch)"""
    shared_negatives: StrictBool = False
    """list-wise, sampled: one draw of num_negatives per step, shared by every target of the batch (a target's
    user's own items among them are masked rather than redrawn): a step touches num_negatives negative rows
    instead of batch x num_negatives, which is what a large catalog's item tower and sparse optimizer pay for"""
    sampler: Sampler = "word2vec"
    """uniform | word2vec (popularity^0.75) | log_popularity (aliases 0 / 1 / 2)"""
    logq_correction: StrictBool = True
    """list-wise: lower each sampled or in-batch candidate's logit by the log of its expected count among the
    candidates, so that the sampled softmax estimates the full one whatever the sampler"""
    in_batch_negatives: StrictBool = False
    """list-wise: also use the batch's other targets as negatives (never the row's own user's items)"""
    gather_negatives: StrictBool = True
    """with in_batch_negatives on several workers: the candidates are every worker's targets (an all-gather
    with gradients), so N workers see the global batch's candidates"""
    epochs: PositiveInt = 10
    """passes over the training samples (the most, with early stopping)"""
    max_steps: Optional[PositiveInt] = None
    """at most this many optimizer steps per epoch (None = the whole epoch); for timing runs on large data"""
    batch_size: PositiveInt = 1024
    """global batch, in examples: samples per prefix, windows with all positions (each up to data.max_len targets);
    each of N workers takes batch_size / N"""
    lr: PositiveNumber = 1e-3
    """Adam learning rate"""
    weight_decay: NonNegativeNumber = 0.0
    """L2 on dense weights (Adam weight decay; not on sparse tables)"""
    sparse_embeddings: Literal["auto", "on", "off"] = "auto"
    """id tables (items, users) with sparse gradients and a lazy Adam that updates only the rows a step used:
    auto = for tables of at least 100,000 rows on CPU (a dense Adam step over 1M items costs ~0.5 s)"""
    embedding_l2: NonNegativeNumber = 0.0
    """L2 on the embeddings used in a batch"""
    num_workers: PositiveInt = 1
    """Ray Train workers (DDP)"""
    cpus_per_worker: PositiveNumber = 1.0
    """logical CPUs per worker; keep the total below the cluster's so that Ray Data can run"""
    use_gpu: StrictBool = False
    """one GPU per worker, NCCL backend"""
    grad_sync: Literal["auto", "allreduce", "exchange"] = "auto"
    """how DDP averages gradients: allreduce (DDP's bucketed all-reduce) | exchange (pairwise exchange by recursive
    doubling: gloo, 2^k workers, gradients <= 1 MiB) | auto (exchange where it applies, else allreduce)"""
    seed: StrictInt = 42
    """seeds model init, shuffling and negative sampling"""
    val_k: PositiveInt = 10
    """validation reports Recall and NDCG at val_k each epoch"""
    val_max_users: PositiveInt = 5000
    """validation uses at most this many users (a seeded sample)"""
    num_threads: NonNegativeInt = 0
    """torch threads per worker; 0 = max(1, round(cpus_per_worker))"""
    val_metric: Literal["recall", "ndcg"] = "recall"
    """recall | ndcg (at val_k): picks the best checkpoint and drives early stopping"""
    early_stopping_patience: NonNegativeInt = 0
    """stop after this many epochs without a better val_metric; 0 = never"""
    max_train_seconds: Optional[PositiveNumber] = None
    """a budget of training seconds (the epochs' wall time, validation excluded): no epoch is started that the
    last epoch's time says would end past it (the first always runs; a resumed run counts its earlier epochs); the best
    epoch within it is kept. None = no budget"""
    max_failures: Annotated[StrictInt, Field(ge=-1)] = 0
    """worker failures Ray Train recovers from by restarting at the last checkpoint (-1 = any number)"""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    """PACK | SPREAD | STRICT_SPREAD: how workers are placed on nodes"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32 | bf16 (autocast for the forward pass; mainly for GPUs)"""

    @property
    def selection_metric(self) -> str:
        """The reported metric that ranks checkpoints, e.g. "val_recall@10"."""
        return f"val_{self.val_metric}@{self.val_k}"

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_alias(cls, value):
        return resolve_alias(value, MODE_ALIASES)

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_alias(cls, value):
        return resolve_alias(value, SAMPLER_ALIASES)

    @model_validator(mode="after")
    def _consistent(self):
        if self.softmax == "full" and self.mode != "listwise":
            raise ValueError(f"train.softmax='full' is a list-wise loss; train.mode={self.mode!r} takes sampled negatives")
        if self.num_negatives == 0 and not self.in_batch_negatives and self.softmax != "full":
            raise ValueError("train.num_negatives=0 needs train.in_batch_negatives=true or train.softmax=full "
                             "(no negatives at all otherwise)")
        if self.shared_negatives and (self.mode != "listwise" or self.softmax != "sampled" or not self.num_negatives):
            raise ValueError(f"train.shared_negatives is for the sampled list-wise loss with train.num_negatives > 0; "
                             f"got mode={self.mode!r}, softmax={self.softmax!r}, num_negatives={self.num_negatives}")
        if self.batch_size < self.num_workers:
            raise ValueError(f"train.batch_size={self.batch_size} is smaller than train.num_workers={self.num_workers}")
        if self.grad_sync == "exchange":
            if self.use_gpu:
                raise ValueError("train.grad_sync='exchange' runs on gloo (CPU); with train.use_gpu use 'allreduce' or "
                                 "'auto'")
            if self.num_workers & (self.num_workers - 1):
                raise ValueError(f"train.grad_sync='exchange' needs a power-of-two train.num_workers, got "
                                 f"{self.num_workers}; use 'allreduce' or 'auto'")
        return self


class IndexConfig(_Section):
    """The FAISS index over item embeddings."""

    _path: ClassVar[str] = "index"

    factory: StrictStr = "Flat"
    """FAISS index_factory string: Flat, IVF256,Flat, HNSW32, IVF256,PQ16, ..."""
    metric: Literal["ip", "cosine", "l2"] = "ip"
    """ip (inner product) | cosine (normalize, then ip) | l2"""
    train_sample: PositiveInt = 100_000
    """vectors used to train IVF / PQ indexes"""
    search_params: dict[StrictStr, Any] = Field(default_factory=dict)
    """FAISS query-time parameters set when the index is built and loaded, e.g. {nprobe: 32} (IVF) or
    {efSearch: 128} (HNSW)"""


class EvalConfig(_Section):
    """Offline evaluation by exact full ranking."""

    _path: ClassVar[str] = "eval"

    ks: tuple[StrictInt, ...] = (10, 50)
    """cut-offs for Recall / HitRate / NDCG / MRR"""
    mask_seen: StrictBool = True
    """exclude the items the user interacted with before the target"""
    batch_size: PositiveInt = 512
    """users scored per batch"""
    max_users: Optional[PositiveInt] = 20_000
    """with more users than this, a seeded sample of about this many is evaluated (metrics.json gives the
    standard errors); None = every user"""

    @field_validator("ks", mode="before")
    @classmethod
    def _one_k_is_a_list(cls, value):
        return (value,) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks):
        if not ks:
            raise ValueError("eval.ks must name at least one cut-off")
        bad = [k for k in ks if k <= 0]
        if bad:
            raise ValueError(f"eval.ks contains {bad[0]!r}; every cut-off must be a positive integer")
        return ks


class ComputeConfig(_Section):
    """How the Ray Data stages use the cluster."""

    _path: ClassVar[str] = "compute"

    embed_actors: PositiveInt = 1
    """actor-pool size of the embedding and evaluation jobs"""
    cpus_per_actor: PositiveNumber = 0.5
    """fractional, so that Ray Data's own read tasks always find a CPU"""
    in_process_max_users: NonNegativeInt = 50_000
    """runs with at most this many users and items are embedded and evaluated in the driver process (the same
    code, without the seconds an actor pool takes to start); 0 = always on Ray Data"""

    def in_process(self, meta: dict) -> bool:
        """Whether the run described by data/meta.json is small enough to embed and evaluate in this process."""
        return max(meta["num_items"], meta["num_sequence_users"]) <= self.in_process_max_users


class TrackingConfig(_Section):
    """Experiment tracking with MLflow (ray_recall/tracking.py). Part of no stage's hash: turning it on or
    pointing it elsewhere re-runs nothing."""

    _path: ClassVar[str] = "tracking"

    enabled: StrictBool = True
    """log every pipeline run to MLflow (RAY_RECALL_TRACKING=0 in the environment turns it off too)"""
    uri: StrictStr | None = None
    """tracking URI (http://host:5000, databricks, sqlite:///path.db); null: MLFLOW_TRACKING_URI, else
    <run_dir's parent>/mlflow.db with artifacts in <parent>/mlartifacts"""
    experiment: StrictStr = "ray_recall"
    """MLflow experiment name (created on first use)"""


SECTIONS = ("data", "model", "train", "index", "eval", "compute", "tracking")


class PipelineConfig(_Section):
    """Everything one run needs. `run_dir` is the only coupling between stages."""

    run_dir: StrictStr = "runs/default"
    """local path or URI of the run directory"""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @classmethod
    def from_yaml(cls, path: str) -> "PipelineConfig":
        try:
            with open(path) as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path!r} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping at the top level")
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> "PipelineConfig":
        """A copy with dotted-key overrides, e.g. replace(**{"train.epochs": 2}), validated as a whole."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {dotted!r}: {p!r} is not a config section")
                node = node[p]
            node[leaf] = value
        return PipelineConfig.from_dict(raw)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections; a stage whose inputs hash the same can be skipped."""
        raw = self.to_dict()
        payload = json.dumps({s: raw[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Errors


def describe(error: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """A pydantic ValidationError -> one line per problem, each naming the dotted key and what is allowed."""
    return "; ".join(_describe_one(e, cls, prefix) for e in error.errors())


def _describe_one(err: dict, cls: type[BaseModel], prefix: str) -> str:
    loc = [str(p) for p in err["loc"]]
    owner, field = _owner(cls, loc)
    key = ".".join(([prefix] if prefix else []) + loc)
    key = _with_index(key, err["loc"])
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = sorted(owner.model_fields) if owner is not None else []
        return f"unknown config key {key}; allowed keys here: {allowed}"
    if kind == "literal_error":
        return f"{key}={value!r} is not allowed; choose one of {_choices(owner, field)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{key} must be an integer, got {value!r}"
    if kind in ("float_type", "float_parsing"):
        return f"{key} must be a number, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{key} must be true or false, got {value!r}"
    if kind in ("string_type",):
        return f"{key} must be a string, got {value!r}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{key or 'config'} must be a mapping, got {type(value).__name__}"
    if kind in ("tuple_type", "list_type"):
        return f"{key} must be a list, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(err.get("ctx", {}).values()), "")
        return f"{key}={value!r} must be {op} {bound}"
    if kind == "value_error":
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return msg if not key or key.split(".")[0] in msg or msg.startswith(key) else f"{key}: {msg}"
    return f"{key}: {err['msg']} (got {value!r})"


def _owner(cls: type[BaseModel], loc: list[str]) -> tuple[type[BaseModel] | None, str | None]:
    """The config class that holds the last key of `loc`, and that key."""
    owner: type[BaseModel] | None = cls
    for i, part in enumerate(loc):
        if owner is None or part not in owner.model_fields:
            return owner, part
        if i == len(loc) - 1:
            return owner, part
        annotation = owner.model_fields[part].annotation
        owner = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return owner, None


def _choices(owner: type[BaseModel] | None, field: str | None) -> list:
    if owner is None or field not in owner.model_fields:
        return []
    for arg in typing.get_args(owner.model_fields[field].annotation) or (owner.model_fields[field].annotation,):
        if typing.get_origin(arg) is Literal:
            return list(typing.get_args(arg))
    if typing.get_origin(owner.model_fields[field].annotation) is Literal:
        return list(typing.get_args(owner.model_fields[field].annotation))
    return []


def _with_index(key: str, loc: tuple) -> str:
    """train.ks.1 -> train.ks[1] (list positions read as indices)."""
    parts = key.split(".")
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out:
            out[-1] += f"[{p}]"
        else:
            out.append(p)
    return ".".join(out)


# ----------------------------------------------------------------------------------------------
# Reference documentation


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) + " or null" if len(inner) == 1 else " or ".join(map(_type_name, inner))
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return {bool: "bool", int: "int", float: "number", str: "string"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value).replace("|", "\\|") + "`"


def reference_markdown() -> str:
    """docs/config.md: every key of every section, its type, default and description."""
    lines = ["# Configuration reference", "",
             "Generated from `ray_recall/config.py` by `python -m ray_recall.config > docs/config.md`; "
             "a test checks that it is current.", "",
             "A config is YAML (or a dict) with the sections below; a missing key takes its default, an unknown "
             "key or a wrong type is an error naming the key. `--set section.key=value` overrides one key on the "
             "command line.", ""]

    def section(cls: type[BaseModel], path: str) -> None:
        lines.extend([f"## `{path}`" if path else "## top level", "", (cls.__doc__ or "").strip().splitlines()[0], "",
                      "| key | type | default | description |", "|---|---|---|---|"])
        nested = []
        for name, field in cls.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, f"{path}.{name}" if path else name))
                if path:  # a subsection inside a section: list it as a row too
                    lines.append(f"| `{name}` | section | | {' '.join((field.description or '').split())}; see "
                                 f"[`{path}.{name}`](#{path}{name}) |")
                continue
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{name}` | {_type_name(annotation)} | {_default_text(field)} | {desc} |")
        lines.append("")
        for sub, sub_path in nested:
            section(sub, sub_path)

    section(PipelineConfig, "")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
