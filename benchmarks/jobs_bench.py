"""The pipeline as separately submitted jobs reproduces the in-process demo: benchmarks/jobs.md.

    .venv/bin/python benchmarks/jobs_bench.py                  # configs/ml100k_dssm.yaml, ~5 min on 2 cores

Two runs of the same config, one after the other:

1. in-process: `python jobs/pipeline.py --config ...` (what `make demo` runs: a local Ray
   started inside the driver);
2. submitted: a private `ray start --head` (its own temp dir and ports, stopped by PID at the end)
   and one `ray job submit --working-dir . -- python jobs/<stage>.py` per stage (preprocess,
   train, embed, build_index, evaluate), each job reading the previous job's outputs from the
   shared run directory.

Training delivers batches in a fixed order for a given seed, so the two runs should agree to
floating-point noise; the report puts every test metric and the per-epoch validation curve side
by side with their differences.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from tests.ray_head import start_head, stop_head  # noqa: E402  the test suite's private-head helper
from report import write_report

STAGE_JOBS = (("preprocess", "jobs/preprocess.py"), ("train", "jobs/train.py"), ("embed", "jobs/embed.py"),
              ("index", "jobs/build_index.py"), ("evaluate", "jobs/evaluate.py"))
TOLERANCE = 1e-3  # metrics are fractions of 943 users: one user is 0.00106


def in_process(config: str, run_dir: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "jobs/pipeline.py", "--config", config, "--run-dir", str(run_dir),
                          "--samples", "0"], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"in-process pipeline failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def submitted(config: str, run_dir: Path, num_cpus: int) -> tuple[dict[str, float], float]:
    head = start_head(num_cpus=num_cpus)
    seconds = {}
    try:
        for stage, script in STAGE_JOBS:
            t0 = time.perf_counter()
            sid, out = head.submit(script, ["--config", config, "--run-dir", str(run_dir)], wait=True)
            info = head.job_info(sid)
            seconds[stage] = time.perf_counter() - t0
            print(f"[jobs] {stage}: {info['status']} in {seconds[stage]:.1f}s (submission {sid})", flush=True)
            if out.returncode or info["status"] != "SUCCEEDED":
                sys.exit(f"job {sid} ({stage}) {info['status']}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    finally:
        stop_head(head)
    return seconds, sum(seconds.values())


def read_run(run_dir: Path) -> dict:
    train = json.loads((run_dir / "model" / "training.json").read_text())
    metric = train["selection_metric"]
    return {"metrics": json.loads((run_dir / "metrics.json").read_text())["metrics"], "metric": metric,
            "val": [h[metric] for h in train["history"]], "best_epoch": train["best_epoch"] + 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/ml100k_dssm.yaml")
    ap.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the private head")
    ap.add_argument("--out", default="benchmarks/jobs.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray_recall_jobs_"))
    load = os.getloadavg()[0]
    print(f"[jobs] in-process pipeline -> {work / 'inprocess'}", flush=True)
    t_in = in_process(args.config, work / "inprocess")
    print(f"[jobs] in-process: {t_in:.1f}s; now one submitted job per stage -> {work / 'submitted'}", flush=True)
    stage_s, t_sub = submitted(args.config, work / "submitted", args.num_cpus)
    a, b = read_run(work / "inprocess"), read_run(work / "submitted")

    lines = [
        "# The pipeline as separately submitted jobs vs the in-process demo",
        "",
        f"Command: `{os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else 'python'} "
        f"benchmarks/jobs_bench.py --config {args.config}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; load average "
        f"{load:.1f} at the start. Recorded {time.strftime('%Y-%m-%d')}.",
        "",
        "- **in-process**: `python jobs/pipeline.py --config ...` (the demo; a local Ray inside the driver), "
        f"{t_in:.0f} s.",
        f"- **submitted**: a `ray start --head --num-cpus {args.num_cpus}` and one `ray job submit --working-dir . "
        "-- python jobs/<stage>.py --config ... --run-dir <shared>` per stage, each job reading the previous "
        f"one's outputs: {t_sub:.0f} s in all ("
        + ", ".join(f"{s} {v:.0f} s" for s, v in stage_s.items()) + "; each includes the job's upload and driver start).",
        "",
        "| method | metric | in-process | submitted jobs | difference |",
        "|---|---|---:|---:|---:|",
    ]
    worst = 0.0
    for method in a["metrics"]:
        for key, va in a["metrics"][method].items():
            vb = b["metrics"][method][key]
            worst = max(worst, abs(va - vb))
            lines.append(f"| {method} | {key} | {va:.4f} | {vb:.4f} | {vb - va:+.4f} |")
    lines += ["", f"Largest difference: {worst:.4f} (tolerance {TOLERANCE}, about one of 943 users): "
              + ("**reproduced**." if worst <= TOLERANCE else "**not reproduced**."), ""]
    if a["val"] and b["val"]:
        lines += [f"Validation {a['metric']} per epoch (in-process / submitted): "
                  + ", ".join(f"{x:.4f} / {y:.4f}" for x, y in zip(a["val"], b["val"]))
                  + f"; best epoch {a['best_epoch']} / {b['best_epoch']}.", ""]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
