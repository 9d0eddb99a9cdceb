"""The train stage: a Ray Train `TorchTrainer` over the preprocessed samples; the best epoch becomes <run>/model/."""

from __future__ import annotations

import json
import os
import time

import ray
import ray.data
import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ray_recall.checkpoint import save_payload
from ray_recall.config import PipelineConfig
from ray_recall.data.preprocess import load_meta
from ray_recall.errors import DataError
from ray_recall.storage import RunDir
from ray_recall.train.loop import train_loop_per_worker


def train(cfg: PipelineConfig, run: RunDir, log=print, max_failures: int = 0, resume: bool = False) -> dict:
    """Train on <run>/data/train with N DDP workers; returns the training summary written to model/training.json.

    Checkpoints go to <run>/checkpoints/train-<config hash>/, so runs of different configs in one run
    directory never pick up each other's checkpoints. Without `resume` that directory is cleared first
    and training starts from scratch; with it, Ray Train continues from the last checkpoint there.
    """
    meta = load_meta(run)  # fails clearly if the data stage has not run
    if meta["samples"]["train"] == 0:
        raise DataError(f"{run.uri}: no training samples (every kept user has fewer than 4 interactions: "
                        "one history item, one train target, validation and test)")
    tc = cfg.train
    cpus = ray.cluster_resources().get("CPU", 0)
    if tc.num_workers * tc.cpus_per_worker >= cpus > 0:
        log(f"[train] warning: {tc.num_workers} workers x {tc.cpus_per_worker} CPU take all {cpus:g} CPUs; Ray Data's "
            "read tasks need one too. Lower train.cpus_per_worker (e.g. 0.5) if training does not start.")
    metric = f"val_recall@{tc.val_k}"
    name = f"train-{cfg.section_hash('data', 'model', 'train')}"
    if not resume and run.exists("checkpoints", name):
        run.fs.delete_dir(run.path("checkpoints", name))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_uri": run.uri},
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=run.uri_of("checkpoints"),
            checkpoint_config=CheckpointConfig(num_to_keep=3, checkpoint_score_attribute=metric, checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": ray.data.read_parquet(run.uri_of("data", "train")).randomize_block_order(seed=tc.seed)},
    )
    log(f"[train] {cfg.model.name} ({tc.mode}, {tc.num_negatives} x {tc.sampler} negatives"
        f"{', in-batch' if tc.in_batch_negatives else ''}) on {tc.num_workers} worker(s), {tc.epochs} epochs")
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0
    if result.error:
        raise result.error
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(metric, float("-inf")))
    with best_ckpt.as_directory() as d:
        state = torch.load(os.path.join(d, "model.pt"), map_location="cpu", weights_only=False)
    with result.checkpoint.as_directory() as d:
        with open(os.path.join(d, "history.json")) as f:
            history = json.load(f)
    payload = {k: state[k] for k in ("name", "embedding_dim", "params", "state_dict")}
    summary = {
        "best_epoch": best_metrics["epoch"], metric: best_metrics[metric], "history": history,
        "fit_seconds": round(seconds, 2), "train_seconds": round(sum(h["epoch_seconds"] for h in history), 2),
        "num_workers": tc.num_workers, "samples_per_second": round(
            sum(h["samples"] for h in history) / max(sum(h["epoch_seconds"] for h in history), 1e-9), 1),
    }
    with run.staged_dir("model") as tmp:
        save_payload(payload, run, tmp, "model.pt")
        run.write_json(summary, tmp, "training.json")
    log(f"[train] best epoch {summary['best_epoch'] + 1}: {metric} {summary[metric]:.4f}; fit {seconds:.1f}s "
        f"(of which epochs {summary['train_seconds']:.1f}s, {summary['samples_per_second']:.0f} samples/s)")
    return summary
