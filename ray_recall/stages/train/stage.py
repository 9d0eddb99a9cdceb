"""The train stage: a Ray Train `TorchTrainer` over the preprocessed samples; the best epoch becomes <run>/model/."""

from __future__ import annotations

import os
import time
from collections.abc import Collection

import numpy as np
import ray
import ray.data
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ray_recall.config import PipelineConfig
from ray_recall.errors import DataError
from ray_recall.rundir import ModelFile, RunDir
from ray_recall.runtime import worker_lines
from ray_recall.stages.train.batches import examples_per_user
from ray_recall.stages.train.loop import resolve_targets, train_loop_per_worker
from ray_recall.stages.train.report import training_curves_png


# Training splits up to this share of the cluster's object store are read into it once per fit (see _train_dataset).
_CACHE_FRACTION = 0.1
_INTERACTION_BYTES = 12  # a sequence row's item (int32) and timestamp (float64)

# Sequences of at most this many interactions are read by the driver and handed to Ray Data as blocks (see
# _train_dataset): a Ray Data read and materialize costs about 3 s of every fit, which dominates small fits (the
# tests' and notebooks' samples, tuning trials on a sample). MovieLens-100K (100k) and larger are read by Ray Data.
_DRIVER_READ_MAX_INTERACTIONS = 20_000

# How often Ray Train's controller polls its workers (Ray's default 2 s). Each state change of a fit
# (workers started, running, finished) waits for a poll: on the tiny fits of tests and tuning a
# quarter second took 6 s off every fit (16 s -> 10 s); a poll is one small call per worker. Ray
# Train passes the driver's value to its controller; set the variable yourself to override this.
_HEALTH_CHECK_INTERVAL_S = "0.25"

# Settings that may change between a run and its resumption without invalidating its checkpoints.
_RESUMABLE = ("epochs", "early_stopping_patience", "max_train_seconds", "max_failures", "num_workers",
              "cpus_per_worker", "placement_strategy", "use_gpu", "num_threads")


def checkpoint_name(cfg: PipelineConfig) -> str:
    """Checkpoints live in <run>/checkpoints/<this>: one directory per (data, model, train) config.

    How long to train and on what hardware are left out, so a run can be resumed with more
    epochs or on another number of workers (the global batch size stays what it was).
    """
    resumable = cfg.replace(**{f"train.{k}": getattr(PipelineConfig().train, k) for k in _RESUMABLE})
    return f"train-{resumable.section_hash('data', 'model', 'train')}"


def latest_checkpoint(run: RunDir, name: str) -> ray.train.Checkpoint | None:
    """The most recent complete checkpoint Ray Train wrote under <run>/checkpoints/<name>, if any."""
    kept = run.checkpoints_by_epoch(name)
    return ray.train.Checkpoint(kept[max(kept)], filesystem=run.fs) if kept else None


def best_kept_epoch(history: list[dict], kept: Collection[int], metric: str) -> dict:
    """The history entry of the epoch whose weights the run keeps: the best `metric` among the epochs that still
    have a checkpoint (`kept`), the earliest of equals.

    Ray Train keeps the few best checkpoints by the metric, but among equal values it may keep later epochs than
    the first: when the best value recurs (a validation figure on a few hundred users often does), the first
    epoch with it can be gone. The best value itself always has a checkpoint.
    """
    candidates = [h for h in history if h["epoch"] in kept]
    if not candidates:
        raise RuntimeError(f"no checkpoint is left of any of the {len(history)} epochs run (kept: {sorted(kept)})")
    return max(candidates, key=lambda h: (h[metric], -h["epoch"]))


def train(cfg: PipelineConfig, run: RunDir, log=print, resume: bool = False, tracking: dict | None = None,
          callbacks: list | None = None, quiet_workers: bool = False) -> dict:
    """Train on <run>/data/train with N DDP workers; returns the training summary written to model/training.json.

    Without `resume` the config's checkpoint directory is cleared and training starts from scratch.
    With it, Ray Train finds the run's earlier checkpoints (same name and storage path) and the
    loop continues after the last completed epoch. Worker failures within a run are retried
    `train.max_failures` times, each time from the last checkpoint. `tracking`: the MLflow run the
    rank-0 worker logs each epoch to (`tracking.Tracker.link()`), or None. `callbacks`: Ray Train
    callbacks of the fit (a search's trials pass Tune's); `quiet_workers`: no per-epoch lines from rank 0.
    """
    meta = run.read_meta()  # fails clearly if the data stage has not run
    if meta["samples"]["train"] == 0:
        raise DataError(f"{run.uri}: no training samples (every kept user has fewer than 4 interactions: "
                        "one history item, one train target, validation and test)")
    tc = cfg.train
    cpus = ray.cluster_resources().get("CPU", 0)
    if tc.num_workers * tc.cpus_per_worker >= cpus > 0:
        log(f"[train] note: {tc.num_workers} workers x {tc.cpus_per_worker} CPU take all {cpus:g} CPUs the cluster has now; "
            "Ray Data's read tasks need one too. On a fixed-size cluster lower train.cpus_per_worker (e.g. 0.5) if "
            "training does not start; an autoscaling cluster adds nodes for the demand instead.")
    metric = tc.selection_metric
    name = checkpoint_name(cfg)
    start_from = latest_checkpoint(run, name) if resume else None
    if not resume:
        run.clear_checkpoints(name)
    if resume and start_from is None:
        log(f"[train] nothing to resume in {run.uri_of('checkpoints', name)}; training from scratch")
    t0 = time.perf_counter()
    train_ds = _train_dataset(run, tc, meta["num_interactions"])
    targets = resolve_targets(tc, cfg.model.name)  # all_positions | per_prefix
    negatives = ("exact softmax over every item" if tc.mode == "listwise" and tc.softmax == "full" else
                 f"{tc.num_negatives} x {tc.sampler} negatives" + (" shared per step" if tc.shared_negatives else "")
                 + (", in-batch" if tc.in_batch_negatives else ""))
    log(f"[train] {cfg.model.name} ({targets.replace('_', ' ')}, {tc.mode}, {negatives}) on {tc.num_workers} "
        f"worker(s), at most {tc.epochs} epochs"
        + (f", resuming from {start_from.path}" if start_from else ""))
    few = _few_steps_note(tc, meta, targets, run.read_schema().max_len)
    if few:
        log(few)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", _HEALTH_CHECK_INTERVAL_S)
    # The rank-0 worker's per-epoch lines reach the console through `lines`, in order with the driver's.
    with worker_lines(log, enabled=not quiet_workers) as lines:
        trainer = TorchTrainer(
            train_loop_per_worker,
            # Ray Train V2 has no resume_from_checkpoint: the loop loads `resume_from` itself when Ray Train
            # hands it no checkpoint of its own (those come from worker restarts within this fit).
            train_loop_config={"cfg": cfg, "run_uri": run.uri, "resume_from": start_from.path if start_from else None,
                               "tracking": tracking, "quiet": quiet_workers, "lines": lines},
            torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                         resources_per_worker={"CPU": tc.cpus_per_worker},
                                         placement_strategy=tc.placement_strategy),
            run_config=RunConfig(
                name=name, storage_path=run.checkpoints_uri(),
                checkpoint_config=CheckpointConfig(num_to_keep=3, checkpoint_score_attribute=metric, checkpoint_score_order="max"),
                failure_config=FailureConfig(max_failures=tc.max_failures),
                logging_config=LoggingConfig(log_level="WARNING"),
                callbacks=callbacks,
            ),
            datasets={"train": train_ds},
            # Ordered delivery makes a fit reproducible: the seeded block order and local shuffle then
            # decide every batch, instead of which background read or collate finishes first.
            dataset_config=ray.train.DataConfig(execution_options=_ordered()),
        )
        result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.error:
        raise result.error
    # Read the outcome back from storage (not from `result`), the same way a resumed run sees it.
    # Ray Train keeps the best few checkpoints by the selection metric; the newest holds the full history.
    kept = run.checkpoints_by_epoch(name)
    history = run.read_checkpoint_history(name, max(kept))
    best_metrics = best_kept_epoch(history, kept, metric)
    best: ModelFile = run.read_checkpoint(name, best_metrics["epoch"])["model"]
    epoch_seconds = sum(h["epoch_seconds"] for h in history)
    summary = {
        "best_epoch": best_metrics["epoch"], "selection_metric": metric, metric: best_metrics[metric],
        "history": history, "epochs_run": len(history), "stopped_early": len(history) < tc.epochs,
        "fit_seconds": round(seconds, 2), "train_seconds": round(epoch_seconds, 2), "num_workers": tc.num_workers,
        "samples_per_second": round(sum(h["samples"] for h in history) / max(epoch_seconds, 1e-9), 1),
    }
    run.write_model(best, summary, training_curves_png(history, metric))
    log(f"[train] best epoch {summary['best_epoch'] + 1}: {metric} {summary[metric]:.4f}; fit {seconds:.1f}s "
        f"(of which epochs {epoch_seconds:.1f}s, {summary['samples_per_second']:.0f} samples/s); "
        f"curves in {run.uri_of('model', 'training_curves.png')}")
    return summary


FEW_STEPS = 10  # an epoch of fewer optimizer steps than this gets a note: the batch is most of the data


def _few_steps_note(tc, meta: dict, targets: str, max_len: int) -> str | None:
    """A line for an epoch of only a few steps (a batch sized for another unit or another log), else None.

    train.batch_size counts examples: samples per prefix, windows with all positions (each ~max_len targets), so
    the same number means ~50x the targets there; a config written without it takes its default either way.
    """
    unit = "windows" if targets == "all_positions" else "samples"
    examples = examples_per_user(meta, targets, max_len, tc.window) * meta["num_sequence_users"]
    steps = max(1, int(np.ceil(examples / tc.batch_size)))
    if steps >= FEW_STEPS:
        return None
    return (f"[train] note: an epoch is about {steps} step(s) of train.batch_size={tc.batch_size} {unit} "
            f"(~{examples:,.0f} {unit} an epoch): few updates per pass; the shipped configs take 64 windows or "
            "256 samples a step")


def _train_dataset(run: RunDir, tc, num_interactions: int) -> ray.data.Dataset:
    """The users' sequence rows in a seeded block order; read once into the object store when they are small.

    Workers build their examples from these rows (stages/train/batches.py). A streamed dataset is
    read from storage again every epoch: a new Ray Data execution (read tasks, split coordinator)
    costing seconds per epoch on a small machine, which dominates short epochs. Sequences that fit in
    `_CACHE_FRACTION` of the object store are read once, in order, so every epoch sees the same
    blocks as a streamed one; larger ones stream (nothing grows with the log but the object store,
    and only up to that bound). The smallest (`_DRIVER_READ_MAX_INTERACTIONS`) are read by the driver.
    """
    columns = ["user_idx", "items", "times", "length"]
    if num_interactions <= _DRIVER_READ_MAX_INTERACTIONS:  # one block per partition file, in a seeded order
        files = run.files("data", "sequences", suffix=".parquet")
        order = np.random.default_rng(tc.seed).permutation(len(files))
        return ray.data.from_arrow([run.read_parquet("data", "sequences", files[i], columns=columns) for i in order])
    ds = ray.data.read_parquet(run.sequences_uri()).select_columns(columns)
    ds = ds.randomize_block_order(seed=tc.seed)
    if num_interactions * _INTERACTION_BYTES <= _CACHE_FRACTION * ray.cluster_resources().get("object_store_memory", 0):
        ds.context.execution_options.preserve_order = True  # block order as streamed: reproducible fits
        ds = ds.materialize()
    return ds


def _ordered():
    """Ray Train's default ingest options, with ordered delivery."""
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options
