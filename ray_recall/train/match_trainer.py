"""`MatchTrainer`: train a model object on a `SeqData` with the train stage (Ray Train), then use it in plain PyTorch.

    model = DSSM(user_features=["age"], hidden_units=[64, 32])      # unbound: no data yet
    trainer = MatchTrainer(model, mode=2, optimizer_params={"lr": 1e-3}, n_epochs=10, num_workers=2)
    trainer.fit(data.train, data.val)                                # Ray Train, DDP
    model.get_item_vectors()                                         # the best epoch's weights, in-process

The trainer maps its arguments onto a `PipelineConfig` (model name from the registry, the model's
constructor arguments as `model.params`) and runs the pipeline's train stage on the data's run
directory, exactly as `ray-recall train` would. Afterwards the run directory holds the usual
model/model.pt, and `trainer.config` continues with the other stages (`run_pipeline(trainer.config,
stages=("embed", "index", "evaluate"))`, `ray-recall serve`).
"""

from __future__ import annotations

import dataclasses

from ray_recall.config import MODE_ALIASES, MODES, PipelineConfig, TrainConfig
from ray_recall.errors import ConfigError

# MatchTrainer arguments that are config fields under another name, or not config fields at all.
_RENAMED = {"n_epochs": "epochs"}
_OPTIMIZER_KEYS = ("lr", "weight_decay")  # Adam's settings in TrainConfig


class MatchTrainer:
    """Trains a recall model with the pipeline's train stage (Ray Train `TorchTrainer`, DDP over `num_workers`).

    Args:
        model: a model object from `ray_recall.models`, built with or (usually) without data.
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

    Attributes after `fit`: `config` (the PipelineConfig that ran), `summary` (the train stage's
    summary: best_epoch, history of loss and validation metrics per epoch, timings).
    """

    def __init__(self, model, mode=None, optimizer_params: dict | None = None, n_epochs: int | None = None,
                 temperature: float | None = None, num_workers: int | None = None, batch_size: int | None = None,
                 num_negatives: int | None = None, sampler=None, cpus_per_worker: float | None = None,
                 seed: int | None = None, log=print, **train_options):
        from ray_recall.models import RecallModel, available_models, get_model_class

        if not isinstance(model, RecallModel):
            raise ConfigError(f"MatchTrainer(model=...) takes a model from ray_recall.models ({available_models()}), "
                              f"not {type(model).__name__}")
        name = getattr(type(model), "registry_name", None)
        if name is None or get_model_class(name) is not type(model):
            raise ConfigError(f"{type(model).__name__} is not a registered model: decorate it with "
                              "@register_model('<name>') so the Ray Train workers can build it by name")
        self.model, self.log = model, log
        options = {"mode": mode, "n_epochs": n_epochs, "temperature": temperature, "num_workers": num_workers,
                   "batch_size": batch_size, "num_negatives": num_negatives, "sampler": sampler,
                   "cpus_per_worker": cpus_per_worker, "seed": seed, **train_options}
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
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
            self._train["mode"] = _check_mode(type(model), self._train["mode"])
        # Validate every option now (cpus_per_worker may still be open): errors before any work starts.
        PipelineConfig.from_dict({"train": self._train})
        self.config: PipelineConfig | None = None
        self.summary: dict | None = None

    def pipeline_config(self, data) -> PipelineConfig:
        """The PipelineConfig `fit` runs for `data` (a SeqData): its data section and run_dir, this trainer's
        model and train sections, defaults elsewhere."""
        train = dict(self._train)
        if "cpus_per_worker" not in train:
            train["cpus_per_worker"] = _default_cpus_per_worker(train.get("num_workers", TrainConfig().num_workers))
        raw = data.config.to_dict()
        raw.update(run_dir=data.run_dir, train=train,
                   model={"name": type(self.model).registry_name, "embedding_dim": self.model.embedding_dim,
                          "params": self.model.hyperparameters})
        return PipelineConfig.from_dict(raw)

    def fit(self, train, val=None):
        """Train on `train` (data.train of a SeqData, or the SeqData itself) and return the model, in eval mode.

        `val` may be given as data.val for symmetry; validation always uses the run's val split
        (Recall@val_k each epoch), which picks the best epoch. The model is built for the data
        first (so a wrong feature name or item_num fails before Ray starts training), trained from
        the seeded initialization by the train stage, and then holds the best epoch's weights.
        """
        from ray_recall.checkpoint import load_payload
        from ray_recall.pipeline import init_ray, run_stage

        data = _data_of(train, "train")
        if val is not None and (_data_of(val, "val") is not data or getattr(val, "name", "val") != "val"):
            raise ConfigError("fit(train, val): val must be the val split of the same data as train (data.val); "
                              "validation runs on the data's own leave-last-out val split")
        init_ray(quiet=self.log is None)
        self.model.bind(data)
        cfg = self.pipeline_config(data)
        log = self.log or (lambda *_: None)
        data.run.write_bytes(cfg.to_yaml().encode(), "config.yaml")
        self.summary = run_stage(cfg, "train", force=True, log=log)
        self.config = cfg
        payload = load_payload(data.run, "model", "model.pt")
        self.model.load_state_dict(payload["state_dict"])
        return self.model.eval()


def _check_mode(cls, mode) -> str:
    """An integer alias or a name -> the mode's name, if the model class trains in it."""
    name = MODE_ALIASES.get(mode) if isinstance(mode, int) and not isinstance(mode, bool) else mode
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


def _data_of(split, arg: str):
    """The SeqData behind a SeqSplit (or a SeqData itself)."""
    from ray_recall.api import SeqData, SeqSplit

    if isinstance(split, SeqSplit):
        if arg == "train" and split.name != "train":
            raise ConfigError(f"fit(train=...) got the {split.name!r} split; pass data.train")
        return split.data
    if isinstance(split, SeqData):
        return split
    raise ConfigError(f"fit({arg}=...) takes data.{arg} from generate_seq_features (a SeqSplit), "
                      f"not {type(split).__name__}")
