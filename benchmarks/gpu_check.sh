#!/usr/bin/env bash
# The GPU path in one run (a machine with one CUDA GPU): SASRec and HSTU on MovieLens-100K through the real
# train stage with train.use_gpu (NCCL process group, batches moved to the device) in fp32 and bf16, then the
# rest of the pipeline. Writes its report to ${OUT:-/tmp}/gpu.md; copy it to benchmarks/gpu.md.
#
#     bash benchmarks/gpu_check.sh            # builds .venv first if needed (make's recipe), ~5 min on one GPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
[ -x .venv/bin/python ] || make .venv/.installed
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
.venv/bin/python - "$OUT" <<'PY'
import json, os, subprocess, sys, time, traceback
import torch
out = sys.argv[1]
lines = ["# The GPU path", "", f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
         f"devices: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}", ""]
lines += ["| model | precision | result | best val Recall@10 | test Recall@10 | targets/s | seconds |", "|---|---|---|---:|---:|---:|---:|"]
for model in ("sasrec", "hstu"):
    for precision in ("fp32", "bf16"):
        run = f"{out}/gpu_{model}_{precision}"
        cmd = [".venv/bin/python", "-m", "ray_recall.cli", "pipeline", "--config", f"configs/ml100k_{model}.yaml",
               "--run-dir", run, "--samples", "0", "--set", "train.use_gpu=true", "--set", f"train.precision={precision}",
               "--set", "train.cpus_per_worker=1", "--set", "train.epochs=30"]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.time() - t0
        open(f"{run}.log", "w").write(p.stdout + p.stderr)
        if p.returncode:
            tail = (p.stdout + p.stderr).strip().splitlines()[-6:]
            lines.append(f"| {model} | {precision} | **failed**: `{' / '.join(tail)[-300:]}` | | | | {secs:.0f} |")
            continue
        tr = json.load(open(f"{run}/model/training.json")); m = json.load(open(f"{run}/metrics.json"))
        lines.append(f"| {model} | {precision} | ok | {tr['val_recall@10']:.4f} | {m['metrics'][model]['recall@10']:.4f} "
                     f"| {tr['samples_per_second']:,.0f} | {secs:.0f} |")
open(f"{out}/gpu.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
