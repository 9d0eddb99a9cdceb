"""Typed, frozen, validated configuration.

Every stage takes one `PipelineConfig`. It is built from YAML or a dict; an
unknown key, a wrong type or an impossible value raises `ConfigError` naming
the key and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from ray_recall.errors import ConfigError

# Aliases accepted for the seed API's integer shorthands.
MODE_ALIASES = {0: "pointwise", 1: "pairwise", 2: "listwise"}
MODES = ("pointwise", "pairwise", "listwise")
SAMPLER_ALIASES = {0: "uniform", 1: "word2vec", 2: "log_popularity"}
SAMPLERS = ("uniform", "word2vec", "log_popularity")


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def _check_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


@dataclass(frozen=True)
class SyntheticConfig:
    """Seeded synthetic log with planted structure (see `ray_recall.data.synthetic`)."""

    num_users: int = 2000  # distinct users
    num_items: int = 1000  # distinct items
    num_groups: int = 8  # latent taste groups; each user belongs to one
    mean_length: float = 30.0  # mean interactions per user (geometric-ish, min 5)
    zipf_exponent: float = 1.0  # item popularity ~ rank^-exponent within a group
    group_affinity: float = 0.85  # probability an interaction comes from the user's group
    seed: int = 0  # generator seed

    def __post_init__(self):
        for key in ("num_users", "num_items", "num_groups", "mean_length"):
            _check_positive(f"data.synthetic.{key}", getattr(self, key))
        if not 0.0 <= self.group_affinity <= 1.0:
            raise ConfigError(f"data.synthetic.group_affinity={self.group_affinity} must be in [0, 1]")


@dataclass(frozen=True)
class DataConfig:
    """Where interactions come from and how sequences are built."""

    source: str = "movielens"  # movielens | table | synthetic
    path: str | None = None  # movielens: None = bundled ml-100k, else a GroupLens directory; table: file, directory or URI
    format: str = "auto"  # table source: auto | parquet | csv
    user_col: str = "user_id"  # column holding user ids (table source)
    item_col: str = "item_id"  # column holding item ids (table source)
    time_col: str = "timestamp"  # column holding numeric timestamps (table source)
    user_feature_cols: tuple[str, ...] = ()  # user attribute columns used as features
    item_feature_cols: tuple[str, ...] = ()  # item attribute columns used as features
    multi_value_cols: tuple[str, ...] = ()  # feature columns holding several values joined by multi_value_sep
    multi_value_sep: str = "|"  # separator inside multi-valued feature strings
    user_table: str | None = None  # table source: optional separate user attribute table (keyed by user_col)
    item_table: str | None = None  # table source: optional separate item attribute table (keyed by item_col)
    title_col: str | None = None  # item column shown beside recommendations (not a feature)
    max_len: int = 50  # history window: the most recent max_len items before a target
    min_user_interactions: int = 3  # users with fewer are dropped (and counted); 3 = one train, val, test each
    # Hash partitions of the log by user when building sequences (one task each); None = one per
    # million interactions, at least 4.
    num_partitions: int | None = None
    # Logs of at most this many interactions are prepared in the driver's process (the same functions and
    # output as on Ray Data, without its ~10 s of fixed cost); larger ones on Ray Data. 0 = always Ray Data.
    in_process_max_rows: int = 2_000_000
    duplicates: str = "drop"  # rows repeating a (user, item, timestamp): drop (counted in data/meta.json) | error
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # used when source == synthetic

    def __post_init__(self):
        _check_choice("data.source", self.source, ("movielens", "table", "synthetic"))
        _check_choice("data.format", self.format, ("auto", "parquet", "csv"))
        _check_choice("data.duplicates", self.duplicates, ("drop", "error"))
        if self.source == "table" and not self.path:
            raise ConfigError("data.path is required when data.source='table'")
        _check_positive("data.max_len", self.max_len)
        if self.num_partitions is not None:
            _check_positive("data.num_partitions", self.num_partitions)
        _check_positive("data.in_process_max_rows", self.in_process_max_rows, allow_zero=True)
        if self.min_user_interactions < 3:
            raise ConfigError(
                f"data.min_user_interactions={self.min_user_interactions} must be >= 3 "
                "(leave-last-out needs one train, one validation and one test item per user)"
            )
        unknown = set(self.multi_value_cols) - set(self.user_feature_cols) - set(self.item_feature_cols)
        if unknown:
            raise ConfigError(f"data.multi_value_cols names {sorted(unknown)}, which are not feature columns")


@dataclass(frozen=True)
class ModelConfig:
    """Which model and its hyperparameters (passed to the model's constructor)."""

    name: str = "dssm"  # registry name; see ray_recall.models.available_models()
    embedding_dim: int = 64  # output embedding size D
    params: dict = field(default_factory=dict)  # model-specific keyword arguments

    def __post_init__(self):
        from ray_recall.models import available_models

        if self.name not in available_models():
            raise ConfigError(f"model.name={self.name!r} is unknown; choose one of {available_models()}")
        _check_positive("model.embedding_dim", self.embedding_dim)


@dataclass(frozen=True)
class TrainConfig:
    """Objective, sampling and the Ray Train run."""

    mode: str = "listwise"  # pointwise | pairwise | listwise (aliases 0 / 1 / 2)
    temperature: float = 0.1  # logits (and BPR margins) are divided by this
    num_negatives: int = 20  # sampled negatives per positive
    sampler: str = "word2vec"  # uniform | word2vec (popularity^0.75) | log_popularity (aliases 0 / 1 / 2)
    in_batch_negatives: bool = False  # list-wise: also use other rows' positives, logQ-corrected
    epochs: int = 10  # passes over the training samples
    batch_size: int = 1024  # global batch size; each of N workers takes batch_size / N
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # L2 on dense weights (Adam weight decay)
    embedding_l2: float = 0.0  # L2 on the embeddings used in a batch
    num_workers: int = 1  # Ray Train workers (DDP)
    cpus_per_worker: float = 1.0  # logical CPUs per worker; keep below the total so Ray Data can run
    use_gpu: bool = False  # one GPU per worker, NCCL backend
    seed: int = 42  # seeds model init, shuffling and negative sampling
    val_k: int = 10  # validation reports Recall@val_k each epoch
    val_max_users: int = 5000  # validation uses at most this many users (a seeded sample)
    num_threads: int = 0  # torch threads per worker; 0 = max(1, int(cpus_per_worker))
    val_metric: str = "recall"  # recall | ndcg (at val_k): picks the best checkpoint and drives early stopping
    early_stopping_patience: int = 0  # stop after this many epochs without a better val_metric; 0 = never
    max_failures: int = 0  # worker failures Ray Train recovers from by restarting at the last checkpoint (-1 = any)
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_SPREAD: how workers are placed on nodes
    precision: str = "fp32"  # fp32 | bf16 (autocast for the forward pass; mainly for GPUs)

    @property
    def selection_metric(self) -> str:
        """The reported metric that ranks checkpoints, e.g. "val_recall@10"."""
        return f"val_{self.val_metric}@{self.val_k}"

    def __post_init__(self):
        mode = MODE_ALIASES.get(self.mode, self.mode) if isinstance(self.mode, int) else self.mode
        sampler = SAMPLER_ALIASES.get(self.sampler, self.sampler) if isinstance(self.sampler, int) else self.sampler
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "sampler", sampler)
        _check_choice("train.mode", self.mode, MODES)
        _check_choice("train.sampler", self.sampler, SAMPLERS)
        _check_choice("train.val_metric", self.val_metric, ("recall", "ndcg"))
        _check_choice("train.placement_strategy", self.placement_strategy, ("PACK", "SPREAD", "STRICT_SPREAD"))
        _check_choice("train.precision", self.precision, ("fp32", "bf16"))
        if self.max_failures < -1:
            raise ConfigError(f"train.max_failures={self.max_failures} must be >= -1 (-1 = retry forever)")
        for key in ("temperature", "epochs", "batch_size", "lr", "num_workers", "cpus_per_worker", "val_k", "val_max_users"):
            _check_positive(f"train.{key}", getattr(self, key))
        for key in ("num_negatives", "weight_decay", "embedding_l2", "num_threads", "early_stopping_patience"):
            _check_positive(f"train.{key}", getattr(self, key), allow_zero=True)
        if self.num_negatives == 0 and not self.in_batch_negatives:
            raise ConfigError("train.num_negatives=0 needs train.in_batch_negatives=true (no negatives at all otherwise)")
        if self.batch_size < self.num_workers:
            raise ConfigError(f"train.batch_size={self.batch_size} is smaller than train.num_workers={self.num_workers}")


@dataclass(frozen=True)
class IndexConfig:
    """The FAISS index over item embeddings."""

    factory: str = "Flat"  # FAISS index_factory string: Flat, IVF256,Flat, HNSW32, IVF256,PQ16, ...
    metric: str = "ip"  # ip (inner product) | cosine (normalize, then ip) | l2
    train_sample: int = 100_000  # vectors used to train IVF/PQ indexes

    def __post_init__(self):
        _check_choice("index.metric", self.metric, ("ip", "cosine", "l2"))
        _check_positive("index.train_sample", self.train_sample)


@dataclass(frozen=True)
class EvalConfig:
    """Offline evaluation by exact full ranking."""

    ks: tuple[int, ...] = (10, 50)  # cut-offs for Recall/HitRate/NDCG/MRR
    mask_seen: bool = True  # exclude items the user interacted with before the target
    batch_size: int = 512  # users scored per batch

    def __post_init__(self):
        if not self.ks:
            raise ConfigError("eval.ks must name at least one cut-off")
        for k in self.ks:
            if not isinstance(k, int) or k <= 0:
                raise ConfigError(f"eval.ks contains {k!r}; every cut-off must be a positive integer")


@dataclass(frozen=True)
class ComputeConfig:
    """How the Ray Data stages use the cluster."""

    embed_actors: int = 1  # actor-pool size of the embedding and evaluation jobs
    cpus_per_actor: float = 0.5  # fractional so Ray Data's own read tasks always find a CPU

    def __post_init__(self):
        _check_positive("compute.embed_actors", self.embed_actors)
        _check_positive("compute.cpus_per_actor", self.cpus_per_actor)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs. `run_dir` is the only coupling between stages."""

    run_dir: str = "runs/default"  # local path or URI of the run directory
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    # ---- construction -------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict | None) -> "PipelineConfig":
        return _build(cls, raw or {}, prefix="")

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
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **overrides: Any) -> "PipelineConfig":
        """Copy with dotted-key overrides, e.g. replace(**{"train.epochs": 2})."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for p in parents:
                if p not in node or not isinstance(node[p], dict):
                    raise ConfigError(f"override {dotted!r}: {p!r} is not a config section")
                node = node[p]
            node[leaf] = value
        return PipelineConfig.from_dict(raw)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections; a stage whose inputs hash the same can be skipped."""
        payload = json.dumps({s: self.to_dict()[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; allowed keys here: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(tp, value, key):
    """Check `value` against the annotation `tp`, converting lists to tuples and nested dicts to dataclasses."""
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is tuple:
        if isinstance(value, (str, int, float)) or value is None:
            value = [value] if value is not None else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            # mode / sampler accept their integer aliases; they are checked in __post_init__.
            if isinstance(value, int) and key in ("train.mode", "train.sampler"):
                return value
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value
