"""Run the stages in order: preprocess -> train -> embed -> index -> evaluate.

Each stage records the hash of the config sections it depends on (its own and every earlier
stage's) in <run>/manifest.json; a re-run skips a stage whose hash still matches and whose outputs
exist, unless `force` is set. Before anything runs, the whole config is checked, the model's
parameters against its constructor and the data's features included (`check_config`).
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ray_recall.config import PipelineConfig
from ray_recall.errors import ConfigError
from ray_recall.models import check_model_config
from ray_recall.rundir import STAGES, RunDir, stage_hash
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


def run_stage(cfg: PipelineConfig, stage: str, *, force: bool = False, resume: bool = False, log=print) -> dict:
    """Run one stage against cfg.run_dir (skipped when its outputs match the config), returning its summary.

    `resume` (train stage): continue from the last checkpoint of an interrupted run of the same config.
    """
    check_config(cfg)
    return _run_stage(cfg, stage, force, log, resume)[0]


def _run_stage(cfg: PipelineConfig, stage: str, force: bool, log, resume: bool = False) -> tuple[dict, bool]:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    run = RunDir(cfg.run_dir)
    if not force and run.stage_done(stage, cfg):
        log(f"[{stage}] up to date (config hash {stage_hash(cfg, stage)}); skipped")
        return run.stage_summary(stage), False
    run.verify_stages(stage)  # what it reads is what the earlier stages wrote
    t0 = time.perf_counter()
    extra = {"resume": resume} if stage == "train" else {}
    summary = _STAGE_FNS[stage](cfg, run, log=log, **extra)
    run.record_stage(stage, cfg, seconds=round(time.perf_counter() - t0, 2), summary=_small(summary))
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
