"""Run the stages in order: preprocess -> train -> embed -> index -> evaluate.

Each stage records the hash of the config sections it depends on (its own and every earlier
stage's) in <run>/manifest.json; a re-run skips a stage whose hash still matches and whose outputs
exist, unless `force` is set. Before anything runs, the whole config is checked, the model's
parameters against its constructor and the data's features included (`check_config`).

Each `run_pipeline` call, and each `run_stage` call of a stage past preprocess, is one MLflow run
(ray_recall/tracking.py): params, per-epoch metrics, test metrics and artifacts, read back from the
run directory once each stage is done (or found up to date).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from typing import Callable

import ray

from ray_recall import faults
from ray_recall.config import PipelineConfig
from ray_recall.errors import ConfigError
from ray_recall.models import check_model_config
from ray_recall.rundir import STAGES, RunDir, stage_hash
from ray_recall.tracking import Tracker, is_remote, tracked
from ray_recall.stages.embed import embed
from ray_recall.stages.evaluate import evaluate
from ray_recall.stages.index import build_index
from ray_recall.stages.preprocess import preprocess
from ray_recall.stages.preprocess.sources import declared_features
from ray_recall.stages.train import train
from ray_recall.stages.train.loop import resolve_targets

_STAGE_FNS: dict[str, Callable] = {"preprocess": preprocess, "train": train, "embed": embed, "index": build_index,
                                   "evaluate": evaluate}


def check_config(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg`, once its model section is known to build a model for the configured data (ConfigError otherwise)."""
    features = declared_features(cfg.data)
    user, item = features if features is not None else (None, None)
    check_model_config(cfg.model, cfg.data.max_len, user, item)
    resolve_targets(cfg.train, cfg.model.name)
    return cfg


def run_stage(cfg: PipelineConfig, stage: str, *, force: bool = False, resume: bool = False, log=print,
              train_options: dict | None = None, tracking_name: str | None = None,
              tracking_parent: str | None = None) -> dict:
    """Run one stage against cfg.run_dir (skipped when its outputs match the config), returning its summary.

    `resume` (train stage): continue from the last checkpoint of an interrupted run of the same config.
    `train_options` (train stage): more keyword arguments of `stages.train.train` (Ray Train callbacks,
    quiet workers), as a search's trials pass them. `tracking_name` / `tracking_parent`: the MLflow run's
    name and parent run (a search's trials are children of the search).
    """
    check_config(cfg)
    with _tracked(cfg, tracking_name or f"{cfg.model.name} {stage}", log, stage != "preprocess",
                  parent=tracking_parent) as tracker:
        return _run_stage(cfg, stage, force, log, resume, tracker, train_options)[0]


def _run_stage(cfg: PipelineConfig, stage: str, force: bool, log, resume: bool = False,
               tracker: Tracker | None = None, train_options: dict | None = None) -> tuple[dict, bool]:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    run = RunDir(cfg.run_dir)
    if not force and run.stage_done(stage, cfg):
        log(f"[{stage}] up to date (config hash {stage_hash(cfg, stage)}); skipped")
        _log_stage(tracker, run, stage, cfg)
        return run.stage_summary(stage), False
    run.verify_stages(stage)  # what it reads is what the earlier stages wrote
    run.forget_stage(stage)  # recorded again only once all of its outputs are in place
    t0 = time.perf_counter()
    extra = {"resume": resume, "tracking": _live_link(tracker), **(train_options or {})} if stage == "train" else {}
    with faults.in_stage(stage):
        summary = _STAGE_FNS[stage](cfg, run, log=log, **extra)
        faults.point("written")
    seconds = round(time.perf_counter() - t0, 2)
    run.record_stage(stage, cfg, seconds=seconds, summary=_small(summary))
    _log_stage(tracker, run, stage, cfg, seconds)
    return summary, True


def run_pipeline(cfg: PipelineConfig, stages=STAGES, *, force: bool = False, resume: bool = False, log=print) -> dict:
    """Run `stages` in order; returns {stage: summary} plus per-stage wall seconds under "timings".

    Once a stage runs, every later stage runs too (its inputs changed).
    """
    check_config(cfg)
    run = RunDir(cfg.run_dir)
    if run.is_local:
        os.makedirs(run.root, exist_ok=True)
    run.write_config(cfg)
    out, timings = {}, {}
    with _tracked(cfg, f"{cfg.model.name} pipeline", log) as tracker:
        for stage in stages:
            t0 = time.perf_counter()
            out[stage], ran = _run_stage(cfg, stage, force, log, resume, tracker)
            force = force or ran
            timings[stage] = round(time.perf_counter() - t0, 2)
        if tracker:
            out["mlflow_run_id"] = tracker.run_id
    out["timings"] = timings
    return out


def _tracked(cfg: PipelineConfig, name: str, log, track: bool = True, parent: str | None = None):
    run = RunDir(cfg.run_dir)
    if not track:
        return nullcontext()
    return tracked(cfg.to_dict(), run.uri, run.root if run.is_local else None, name, log, parent_run_id=parent)


def _live_link(tracker: Tracker | None) -> dict | None:
    """What the rank-0 training worker logs each epoch to, or None where it may not reach the store: a
    local store (a file of the driver's machine) on a cluster of more than one node. The driver then
    logs the epochs from the checkpoint history after the fit."""
    if tracker is None:
        return None
    if is_remote(tracker.uri) or sum(n["Alive"] for n in ray.nodes()) <= 1:
        return tracker.link()
    return None


def _log_stage(tracker: Tracker | None, run: RunDir, stage: str, cfg: PipelineConfig, seconds: float | None = None) -> None:
    """What a finished (or up-to-date) stage adds to the MLflow run, read from the run directory."""
    if tracker is None:
        return
    if seconds is not None:
        tracker.log_metrics({f"seconds_{stage}": seconds})
    if stage == "preprocess":
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        meta = run.read_meta()
        tracker.log_metrics({f"data_{k}": meta[k] for k in ("num_users", "num_items", "num_interactions") if k in meta})
    elif stage == "train":
        training = run.read_training()
        if not tracker.has_metric("loss"):  # not logged live by the worker
            for h in training["history"]:
                tracker.log_metrics(h, step=h["epoch"])
        tracker.log_metrics({"best_epoch": training["best_epoch"], "epochs_run": training["epochs_run"],
                             "train_samples_per_second": training["samples_per_second"]})
        tracker.log_bytes(run.read_bytes("model", "training_curves.png"), "training_curves.png")
    elif stage == "evaluate":
        out = run.read_metrics()
        for method, values in out["metrics"].items():
            prefix = "test_" if method == cfg.model.name else f"{method}_test_"
            tracker.log_metrics({prefix + k: v for k, v in values.items()})
        tracker.log_text(json.dumps(out, indent=2), "metrics.json")


def _small(summary: dict) -> dict:
    """The part of a summary worth keeping in the manifest (drop long lists)."""
    return {k: v for k, v in (summary or {}).items() if not isinstance(v, (list, dict)) or k == "metrics"}
