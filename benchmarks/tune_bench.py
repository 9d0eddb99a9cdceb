"""Hyperparameter search on MovieLens-100K with `ray_recall.tuning.search` (Ray Tune + ASHA); -> benchmarks/tune.md.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/tune_bench.py                 # SASRec, HSTU and DSSM, 12 trials each
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/tune_bench.py --models dssm --num-samples 3 --quick \
        --out /tmp/tune.md                                                            # a smoke run

For each model: the shipped config (configs/ml100k_<model>.yaml) runs through the whole pipeline (its
validation and test figures, the reference), then `search` runs its space (configs/search/<model>.yaml)
around that config: `--num-samples` trials, 2 at a time (one Ray Train worker with 1 CPU each, on a
local Ray with 3 logical CPUs on this 2-core machine), ASHA on validation Recall@10 from epoch 4. The
best trial's run directory then goes through embed, index and evaluate for its test figures. Nothing
but validation chose anything.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from report import write_report  # noqa: E402

METRICS = ("recall@10", "ndcg@10", "recall@50")


def run_model(model: str, work: str, num_samples: int, epochs_scale: float, log) -> dict:
    import yaml

    from ray_recall.config import PipelineConfig
    from ray_recall.pipeline import run_pipeline, run_stage
    from ray_recall.rundir import RunDir
    from ray_recall.tuning import search

    cfg = PipelineConfig.from_yaml(os.path.join(ROOT, "configs", f"ml100k_{model}.yaml"))
    over = {"run_dir": os.path.join(work, model)}
    if epochs_scale != 1.0:
        over["train.epochs"] = max(1, round(cfg.train.epochs * epochs_scale))
    cfg = cfg.replace(**over)
    with open(os.path.join(ROOT, "configs", "search", f"{model}.yaml")) as f:
        space = yaml.safe_load(f)

    t0 = time.perf_counter()
    shipped = run_pipeline(cfg, log=log)
    shipped_s = time.perf_counter() - t0
    metric = cfg.train.selection_metric

    t0 = time.perf_counter()
    out = search(cfg, space, num_samples=num_samples, max_concurrent=2, out=os.path.join(work, f"{model}-tune"), log=log)
    search_s = time.perf_counter() - t0

    best = out["best"]
    best_cfg = RunDir(best["run_dir"]).read_config()
    for stage in ("embed", "index", "evaluate"):
        result = run_stage(best_cfg, stage, log=log)
    return {"model": model, "metric": metric, "space": space, "search": out, "search_s": search_s,
            "shipped": {"val": shipped["train"][metric], "test": shipped["evaluate"]["metrics"][model],
                        "popular": shipped["evaluate"]["metrics"]["most_popular"], "seconds": shipped_s,
                        "train_s": shipped["train"]["train_seconds"], "best_epoch": shipped["train"]["best_epoch"] + 1},
            "best": {"val": best["value"], "test": result["metrics"][model], "params": best["params"],
                     "epoch": best["epoch"]}}


def report(results: list[dict], args, started: str, wall: float, load: tuple) -> list[str]:
    cmd = "RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/tune_bench.py" + (
        " " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "")
    import ray
    import torch

    lines = ["# Hyperparameter search on MovieLens-100K (Ray Tune, ASHA)", "",
             f"Command: `{cmd}`", "",
             f"Machine: {os.cpu_count()} cores ({platform.machine()}), load average {load[0]:.2f} / {load[1]:.2f} / "
             f"{load[2]:.2f} at the start; Python {platform.python_version()}, PyTorch {torch.__version__}, Ray "
             f"{ray.__version__}. Recorded {started}; the whole run took {wall / 60:.1f} min.", "",
             "Each search: `ray_recall.tuning.search` (what `ray-recall tune` runs) around the model's shipped config, "
             "over the space in `configs/search/<model>.yaml`, random search (seed 0), 2 trials at a time, each a Ray "
             "Train fit with one 1-CPU worker on a local Ray of 3 logical CPUs; ASHA on validation Recall@10 "
             "(first rung after 4 epochs, reduction factor 3); the config's own early stopping ends the rest. "
             "Validation: each user's second-to-last item, exact full ranking, seen items masked (a trial's value is "
             "its best epoch's). Test figures only report: the best trial's run directory goes through embed, "
             "index and evaluate after the search chose it.", ""]
    for r in results:
        s, b, out = r["shipped"], r["best"], r["search"]
        finished = sum(t["status"] == "finished" for t in out["trials"])
        lines += [f"## {r['model']}", "",
                  f"Space: " + ", ".join(f"`{k}: {v}`" for k, v in r["space"].items()) + ".", "",
                  f"{len(out['trials'])} trials in {r['search_s'] / 60:.1f} min ({finished} ran until their early "
                  f"stopping or epoch cap, {len(out['trials']) - finished} stopped by ASHA); the shipped config's "
                  f"whole pipeline took {s['seconds']:.0f} s ({s['train_s']:.0f} s of training epochs).", "",
                  "| config | val " + r["metric"].replace("val_", "") + " | " + " | ".join(f"test {m}" for m in METRICS) + " |",
                  "|---|---:|" + "---:|" * len(METRICS),
                  f"| shipped | {s['val']:.4f} | " + " | ".join(f"{s['test'][m]:.4f}" for m in METRICS) + " |",
                  f"| best trial ({', '.join(f'{k}={_fmt(v)}' for k, v in b['params'].items())}) | {b['val']:.4f} | "
                  + " | ".join(f"{b['test'][m]:.4f}" for m in METRICS) + " |",
                  f"| most popular | - | " + " | ".join(f"{s['popular'][m]:.4f}" for m in METRICS) + " |", "",
                  "Every trial, best validation first:", "",
                  "| trial | " + " | ".join(r["space"]) + " | val | best epoch | epochs | status |",
                  "|---|" + "---|" * len(r["space"]) + "---:|---:|---:|---|"]
        for t in out["trials"]:
            lines.append(f"| {t['trial_id']} | " + " | ".join(_fmt(t["params"].get(k, "")) for k in r["space"])
                         + f" | {t['value']:.4f} | {t['epoch']} | {t['epochs']} | {t['status']} |"
                         if t["value"] is not None else f"| {t['trial_id']} | failed |")
        verdict = ("beats the shipped config on validation" if b["val"] > s["val"] else
                   "does not beat the shipped config on validation")
        lines += ["", f"The best trial {verdict} ({b['val']:.4f} vs {s['val']:.4f}).", ""]
    return lines


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["sasrec", "hstu", "dssm"])
    p.add_argument("--num-samples", type=int, default=12)
    p.add_argument("--epochs-scale", type=float, default=1.0, help="scale the configs' epoch caps (smoke runs)")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "runs", "tune_bench"))
    p.add_argument("--out", default=os.path.join(HERE, "tune.md"))
    p.add_argument("--quick", action="store_true", help="a smoke run: say so in the report")
    args = p.parse_args()

    from ray_recall.runtime import init_ray

    load = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    init_ray(num_cpus=3)
    results = []
    for model in args.models:
        results.append(run_model(model, args.work_dir, args.num_samples, args.epochs_scale, print))
    lines = report(results, args, started, time.perf_counter() - t0, load)
    write_report(args.out, lines, smoke="fewer trials and epochs" if args.quick else None)


if __name__ == "__main__":
    main()
