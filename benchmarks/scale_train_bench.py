"""Training throughput at scale, steady state: the 10M synthetic log against MovieLens-100K; -> benchmarks/scale_train.md.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/scale_train_bench.py     # ~20 min on 2 cores

The same models and settings as benchmarks/scale.md (the shipped DSSM and SASRec configs, 2 Ray Train
workers of 1 CPU and 1 thread), but measured where a long run spends its time: an epoch of the 10M log
is `--steps` optimizer steps per worker, enough that Ray Data's per-epoch start and the chunks built
ahead (a chunk is ~16k examples: 512 SASRec steps, 256 DSSM steps of a worker) are paid over many steps;
MovieLens-100K trains full epochs. Throughput per core = targets / s over the epochs after the first,
divided by 2 workers. DSSM is measured with its shared negatives (shipped) and with 50 drawn per sample
(before), SASRec with and without `train.length_buckets`. `--models dssm` re-measures DSSM's rows only.

Then where a step's time goes, in one process (no Ray, 1 thread): building the chunk's examples
(negatives drawn and rejected), forward, backward, optimizer, per step, at both sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from scale_bench import ROOT, config, generate  # first: it puts the repository on sys.path and sets Ray's environment
import yaml
from report import write_report

PY = sys.executable
TARGET_RATIO = 0.8
PER_ROW = {"train.shared_negatives": False, "train.num_negatives": 50}  # DSSM's negatives before it shared them
CASES = [("dssm", {}), ("dssm", PER_ROW), ("sasrec", {}), ("sasrec", {"train.length_buckets": True})]


def case_name(model: str, over: dict) -> str:
    return model + ("_buckets" if "train.length_buckets" in over else "_per_row" if over == PER_ROW else "")


def cli(*args: str, log: str) -> None:
    with open(log, "a") as f:
        subprocess.run([PY, "-m", "ray_recall.cli", *args, "--num-cpus", "3"], check=True, stdout=f,
                       stderr=subprocess.STDOUT, cwd=ROOT)


def train(cfg: dict, over: dict, work: str, name: str) -> dict:
    """`ray-recall train` in a fresh process on cfg's (already preprocessed) run; its per-epoch history."""
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    sets = [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    t0 = time.perf_counter()
    cli("train", "--config", path, "--force", *sets, log=os.path.join(work, f"{name}.log"))
    history = json.load(open(os.path.join(cfg["run_dir"], "model", "training.json")))["history"]
    steady = history[1:]
    samples, seconds = sum(h["samples"] for h in steady), sum(h["epoch_seconds"] for h in steady)
    cpu = sum(h["cpu_seconds"] for h in steady)
    return {"per_core": samples / seconds / 2, "epochs": len(history), "seconds": seconds, "samples": samples,
            "cpu_share": cpu / seconds / 2, "wall": time.perf_counter() - t0}


def breakdown(cfg_dict: dict, over: dict, steps: int) -> dict:
    """ms per step of build / forward / backward / optimizer, one process, one thread, per-worker batches of 2."""
    import numpy as np
    import torch

    from ray_recall.config import PipelineConfig
    from ray_recall.rundir import RunDir
    from ray_recall.stages.train.batches import split_batches
    from ray_recall.stages.train.loop import Trainer
    from ray_recall.stages.train.step import batch_loss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = PipelineConfig.from_dict(cfg_dict).replace(**over)
    run = RunDir(cfg.run_dir)
    tr = Trainer(cfg, run)
    per = max(1, cfg.train.batch_size // 2)
    rows = run.read_parquet("data", "sequences", columns=["user_idx", "items", "times", "length"])
    order = np.random.default_rng(0).permutation(rows.num_rows)
    builder, model = tr.builder(1, per), tr.model.train()
    t = dict(build=0.0, forward=0.0, backward=0.0, optimizer=0.0)
    built = n = targets = 0
    for i in range(0, rows.num_rows, tr.rows_per_chunk):
        t0 = time.perf_counter()
        chunk = builder(rows.take(order[i:i + tr.rows_per_chunk]))
        t["build"] += time.perf_counter() - t0
        batches = list(split_batches(chunk, per))
        built += len(batches)
        for batch in batches:
            t0 = time.perf_counter()
            loss, k = batch_loss(model, batch, cfg.train, tr.tables)
            t1 = time.perf_counter()
            tr.optimizer.zero_grad()
            loss.backward()
            t2 = time.perf_counter()
            tr.optimizer.step()
            t3 = time.perf_counter()
            t["forward"] += t1 - t0
            t["backward"] += t2 - t1
            t["optimizer"] += t3 - t2
            n, targets = n + 1, targets + k
            if n >= steps:
                break
        if n >= steps:
            break
    t["build"] *= n / built  # a chunk's build, charged to the steps it feeds
    ms = {k: 1000 * v / n for k, v in t.items()}
    return {"ms": ms, "targets_per_step": targets / n, "per_core": targets / n / (sum(ms.values()) / 1000)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default="/tmp/ray_recall_scale_train")
    ap.add_argument("--out", default="benchmarks/scale_train.md")
    ap.add_argument("--profile-steps", type=int, default=200)
    ap.add_argument("--models", nargs="+", default=None, choices=sorted({m for m, _ in CASES}),
                    help="re-measure only these models; the other rows are kept from the work dir's results.json "
                         "(each row says when it was recorded)")
    args = ap.parse_args()
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    steps = {"dssm": 512, "sasrec": 768}
    kept = {}
    if args.models and os.path.exists(os.path.join(work, "results.json")):
        kept = {case_name(r["model"], r["over"]): r for r in json.load(open(os.path.join(work, "results.json")))}
    missing = [case_name(m, o) for m, o in CASES if args.models and m not in args.models and case_name(m, o) not in kept]
    if missing:  # a report without them would silently drop their rows
        sys.exit(f"--models {' '.join(args.models)}: no earlier results for {', '.join(missing)} in "
                 f"{os.path.join(work, 'results.json')}; run without --models, or with the same --work-dir as before")
    paths = generate(work, 10)
    data = {"10M": os.path.join(work, "data_10M"), "ml100k": os.path.join(work, "data_ml100k")}
    for label, run in data.items():
        if not os.path.exists(os.path.join(run, "data", "meta.json")):
            cfg = config("sasrec", paths if label == "10M" else None, run, 2, 1000)
            path = os.path.join(work, f"preprocess_{label}.yaml")
            yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
            cli("preprocess", "--config", path, log=os.path.join(work, "preprocess.log"))
    results = []
    for model, over in CASES:
        if args.models and model not in args.models:
            if case_name(model, over) in kept:
                results.append(kept[case_name(model, over)])
            continue
        row = {"model": model, "over": over, "recorded": started}
        for label, run in data.items():
            cfg = config(model, paths if label == "10M" else None, run, 2, 1000)
            if label == "10M":
                cfg["train"].update({"epochs": 2, "max_steps": steps[model]})
            else:
                cfg["train"].update({"epochs": 6, "max_steps": None})
            name = case_name(model, over).replace(model, f"{model}_{label}", 1)
            row[label] = train(cfg, over, work, name)
            row[label + "_profile"] = breakdown(cfg, over, args.profile_steps)
            print(f"[scale-train] {name}: {row[label]['per_core']:,.0f} targets/s per core (Ray, 2 workers); "
                  f"one process {row[label + '_profile']['per_core']:,.0f}", flush=True)
        results.append(row)
    json.dump(results, open(os.path.join(work, "results.json"), "w"), indent=1)
    write(args.out, started, steps, results)


def write(out: str, started: str, steps: dict, results: list) -> None:
    lines = ["# Training throughput at scale, steady state (10M synthetic log vs MovieLens-100K)", "",
             "Command: `RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/scale_train_bench.py`", "",
             f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; this run started "
             f"{started} (rows kept from an earlier run with `--models` say when they were recorded). Shipped configs, 2 Ray Train workers (1 CPU, 1 thread each), `ray-recall train` in a fresh "
             f"process. 10M: 2 epochs of {steps['dssm']} (DSSM) / {steps['sasrec']} (SASRec) steps per worker; "
             "MovieLens-100K: 6 full epochs. Throughput from the epochs after the first.", "",
             "## Ray Train, 2 workers: targets per second per core", "",
             "| model | setting | ML-100K | 10M | 10M / ML-100K | CPU busy (10M) | recorded |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        setting = ", ".join(f"{k}={v}" for k, v in r["over"].items()) or "shipped"
        ml, big = r["ml100k"]["per_core"], r["10M"]["per_core"]
        lines.append(f"| {r['model']} | {setting} | {ml:,.0f} | {big:,.0f} | {big / ml:.2f}x | "
                     f"{r['10M']['cpu_share']:.0%} | {r.get('recorded', '2026-12-06 00:33')} |")
    lines += ["", "## One process, one thread: milliseconds per step (per-worker batch)", "",
              "| model | setting | data | targets / step | build | forward | backward | optimizer | targets/s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        setting = ", ".join(f"{k}={v}" for k, v in r["over"].items()) or "shipped"
        for label in ("ml100k", "10M"):
            p = r[label + "_profile"]
            lines.append(f"| {r['model']} | {setting} | {label} | {p['targets_per_step']:,.0f} | "
                         + " | ".join(f"{p['ms'][k]:.1f}" for k in ("build", "forward", "backward", "optimizer"))
                         + f" | {p['per_core']:,.0f} |")
    lines += ["", "## Targets", ""]
    for r in results:
        setting = ", ".join(f"{k}={v}" for k, v in r["over"].items()) or "shipped"
        ml, big = r["ml100k"]["per_core"], r["10M"]["per_core"]
        lines.append(f"- {r['model']} ({setting}): {big:,.0f} targets/s per core at 10M, {ml:,.0f} on MovieLens-100K "
                     f"({big / ml:.2f}x; target >= {TARGET_RATIO}x): {'met' if big >= TARGET_RATIO * ml else '**missed**'}.")
    write_report(out, lines)


if __name__ == "__main__":
    main()
