"""The shipped configs, unchanged but for the data, on synthetic logs shaped unlike MovieLens-100K.

    .venv/bin/python benchmarks/shapes_bench.py                       # both shapes, every model, ~20 min on 2 cores
    .venv/bin/python benchmarks/shapes_bench.py --shapes sparse --models sasrec --out /tmp/shapes.md

The configs are tuned on MovieLens-100K (943 users, 1,682 items, ~106 interactions a user). Public data
they will meet is often sparser (a large catalogue, a few interactions a user) or longer (hundreds a user).
Each config `configs/ml100k_<model>.yaml` runs through every stage (`ray-recall pipeline`) on the seeded
generator's log of each shape below, with only `data.*` and `run_dir` overridden: training stops on
validation as shipped, nothing is fitted to these logs. What this shows is that every default runs on
them and where each model lands against most-popular; the generator's taste groups are not real
behaviour, so the figures do not rank the models for real data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from report import write_report

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("dssm", "youtubednn", "gru4rec", "sasrec", "hstu", "mind", "comirec")
SHAPES = {  # name -> the generator's settings (data.synthetic.*)
    "sparse": {"num_users": 4000, "num_items": 30000, "mean_length": 7, "seed": 3},
    "long": {"num_users": 600, "num_items": 3000, "mean_length": 300, "seed": 3},
}


def run_one(model: str, shape: str, work: str) -> dict:
    run_dir = os.path.join(work, f"{shape}-{model}")
    sets = {"run_dir": run_dir, "data.source": "synthetic",
            **{f"data.synthetic.{k}": v for k, v in SHAPES[shape].items()}}
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray-recall"), "pipeline",
           "--config", os.path.join(ROOT, "configs", f"ml100k_{model}.yaml"), "--samples", "0"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        return {"model": model, "shape": shape, "error": (out.stdout + out.stderr).strip().splitlines()[-1]}
    training = json.load(open(os.path.join(run_dir, "model", "training.json")))
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))["metrics"]
    meta = json.load(open(os.path.join(run_dir, "data", "meta.json")))
    return {"model": model, "shape": shape, "users": meta["num_sequence_users"], "items": meta["num_items"],
            "interactions": meta["num_interactions"], "val": training[training["selection_metric"]],
            "best_epoch": training["best_epoch"] + 1, "epochs": training["epochs_run"],
            "train_s": training["train_seconds"], "pipeline_s": round(seconds, 1),
            "r10": metrics[model]["recall@10"], "ndcg10": metrics[model]["ndcg@10"], "r50": metrics[model]["recall@50"],
            "pop_r10": metrics["most_popular"]["recall@10"], "pop_r50": metrics["most_popular"]["recall@50"]}


def markdown(rows: list[dict], command: str) -> list[str]:
    lines = [
        "# The shipped configs on logs shaped unlike MovieLens-100K", "",
        f"Command: `{command}`", "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}; a local Ray "
        f"started in-process per run, 1 Ray Train worker with 1 CPU (as shipped). Recorded {time.strftime('%Y-%m-%d')}.",
        "",
        "Each `configs/ml100k_<model>.yaml` as shipped, with only `data.*` and `run_dir` set: the seeded generator's "
        "log (power-law popularity, taste groups) of each shape, leave-last-out, exact full ranking, seen items "
        "masked. Training stops on validation as shipped. The generator's taste groups are not real behaviour: "
        "the table shows that every default runs on these shapes and where it lands against most-popular, not "
        "how the models rank on real data.", "",
        "| shape | generator | users | items | interactions |", "|---|---|---:|---:|---:|",
    ]
    seen = set()
    for r in rows:
        if "error" not in r and r["shape"] not in seen:
            seen.add(r["shape"])
            gen = ", ".join(f"{k}={v}" for k, v in SHAPES[r["shape"]].items())
            lines.append(f"| {r['shape']} | {gen} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} |")
    lines += ["", "| shape | model | val R@10 | best epoch / run | train s | pipeline s | R@10 | NDCG@10 | R@50 | "
              "most-popular R@10 / R@50 | R@10 / most-popular |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['model']} | failed: {r['error']} | | | | | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['model']} | {r['val']:.4f} | {r['best_epoch']} / {r['epochs']} | "
                     f"{r['train_s']:.0f} | {r['pipeline_s']:.0f} | {r['r10']:.4f} | {r['ndcg10']:.4f} | {r['r50']:.4f} | "
                     f"{r['pop_r10']:.4f} / {r['pop_r50']:.4f} | {r['r10'] / max(r['pop_r10'], 1e-9):.2f}x |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--work-dir", default="/tmp/ray_recall_shapes")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "shapes.md"))
    args = p.parse_args()
    rows = []
    for shape in args.shapes:
        for model in args.models:
            rows.append(run_one(model, shape, args.work_dir))
            r = rows[-1]
            print(f"[shapes] {shape} {model}: " + (f"failed: {r['error']}" if "error" in r else
                  f"R@10 {r['r10']:.4f} (most-popular {r['pop_r10']:.4f}), best epoch {r['best_epoch']} of "
                  f"{r['epochs']}, {r['pipeline_s']:.0f} s"), flush=True)
    command = "python benchmarks/shapes_bench.py " + " ".join(sys.argv[1:])
    write_report(args.out, markdown(rows, command.strip()), echo=False)
    print(f"[shapes] {args.out}")


if __name__ == "__main__":
    main()
