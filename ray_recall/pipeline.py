"""Run the stages in order: preprocess -> train -> embed -> index -> evaluate.

Each stage records the hash of the config sections it depends on (its own and
every earlier stage's) in <run>/manifest.json; a re-run skips a stage whose hash
still matches and whose outputs exist, unless `force` is set.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import ray

from ray_recall.config import PipelineConfig
from ray_recall.storage import RunDir

STAGES = ("preprocess", "train", "embed", "index", "evaluate")
# Config sections each stage's output depends on (cumulative along the pipeline).
_SECTIONS = {
    "preprocess": ("data",),
    "train": ("data", "model", "train"),
    "embed": ("data", "model", "train"),
    "index": ("data", "model", "train", "index"),
    "evaluate": ("data", "model", "train", "eval"),
}
_OUTPUTS = {"preprocess": "data/meta.json", "train": "model/model.pt", "embed": "embeddings/meta.json",
            "index": "index/meta.json", "evaluate": "metrics.json"}


def init_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local Ray in-process."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from ray.data import DataContext

    address = os.environ.get("RAY_ADDRESS")
    kwargs = dict(logging_level="ERROR", log_to_driver=not quiet)
    if address:
        ray.init(address=address, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    ctx = DataContext.get_current()
    ctx.print_on_execution_start = False
    # Ray Data logs every execution plan at INFO; the stages print their own one-line progress.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if quiet:
        ctx.enable_progress_bars = False


def _stage_fn(stage: str) -> Callable:
    from ray_recall.data.preprocess import preprocess
    from ray_recall.embed import embed
    from ray_recall.evaluate import evaluate
    from ray_recall.index import build_index
    from ray_recall.train.trainer import train

    return {"preprocess": preprocess, "train": train, "embed": embed, "index": build_index, "evaluate": evaluate}[stage]


def run_stage(cfg: PipelineConfig, stage: str, *, force: bool = False, resume: bool = False, log=print) -> dict:
    """Run one stage against cfg.run_dir (skipped when its outputs match the config), returning its summary.

    `resume` (train stage): continue from the last checkpoint of an interrupted run of the same config.
    """
    return _run_stage(cfg, stage, force, log, resume)[0]


def _run_stage(cfg: PipelineConfig, stage: str, force: bool, log, resume: bool = False) -> tuple[dict, bool]:
    if stage not in STAGES:
        from ray_recall.errors import ConfigError

        raise ConfigError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    run = RunDir(cfg.run_dir)
    h = cfg.section_hash(*_SECTIONS[stage])
    if not force and run.stage_done(stage, h) and run.exists(*_OUTPUTS[stage].split("/")):
        log(f"[{stage}] up to date (config hash {h}); skipped")
        return run.manifest()["stages"][stage].get("summary", {}), False
    t0 = time.perf_counter()
    extra = {"resume": resume} if stage == "train" else {}
    summary = _stage_fn(stage)(cfg, run, log=log, **extra)
    run.record_stage(stage, h, seconds=round(time.perf_counter() - t0, 2), summary=_small(summary))
    return summary, True


def run_pipeline(cfg: PipelineConfig, stages=STAGES, *, force: bool = False, resume: bool = False, log=print) -> dict:
    """Run `stages` in order; returns {stage: summary} plus per-stage wall seconds under "timings".

    Once a stage runs, every later stage runs too (its inputs changed).
    """
    run = RunDir(cfg.run_dir)
    if run.is_local:
        os.makedirs(run.root, exist_ok=True)
    run.write_bytes(cfg.to_yaml().encode(), "config.yaml")
    out, timings = {}, {}
    for stage in stages:
        t0 = time.perf_counter()
        out[stage], ran = _run_stage(cfg, stage, force, log, resume)
        force = force or ran
        timings[stage] = round(time.perf_counter() - t0, 2)
    out["timings"] = timings
    return out


def _small(summary: dict) -> dict:
    """The part of a summary worth keeping in the manifest (drop long lists)."""
    return {k: v for k, v in (summary or {}).items() if not isinstance(v, (list, dict)) or k == "metrics"}
