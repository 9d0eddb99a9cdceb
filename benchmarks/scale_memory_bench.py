"""Training workers' memory at 10M and 50M, SASRec: `ray-recall train` alone under the process sampler.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/scale_memory_bench.py --sizes 10 50 --work-dir DIR

The training stage of benchmarks/scale.md (the shipped SASRec config on the synthetic log, 2 workers, 2
epochs of 200 steps), without the other stages: each worker's peak RSS and peak private memory
(benchmarks/proctree.py) less the model state (weights, gradients, Adam's moments, the sampler: scale_bench's
`model_state_bytes`). Prints one JSON line per size; the figures are quoted in scale.md's last section.
"""

import argparse
import json
import os
import subprocess
import sys

import scale_bench as sb  # first: it puts the repository on sys.path and sets Ray's environment
import yaml
from proctree import ProcessPeaks
from scale_bench import ROOT

GIB = 1024 ** 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 50], choices=sorted(sb.SIZES))
    ap.add_argument("--work-dir", default="/tmp/ray_recall_scale_memory")
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    for size in args.sizes:
        paths = sb.generate(args.work_dir, size)
        run = os.path.join(args.work_dir, f"sasrec_{size}M")
        path = os.path.join(args.work_dir, f"sasrec_{size}M.yaml")
        yaml.safe_dump(sb.config("sasrec", paths, run, 400, 10000), open(path, "w"), sort_keys=False)
        if not os.path.exists(os.path.join(run, "data", "meta.json")):
            subprocess.run([sys.executable, "-m", "ray_recall.cli", "preprocess", "--config", path, "--num-cpus", "3"],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        with open(os.path.join(args.work_dir, f"train_{size}M.log"), "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ray_recall.cli", "train", "--config", path, "--num-cpus",
                                     "3", "--force"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            with ProcessPeaks(proc.pid) as peaks:
                if proc.wait() != 0:
                    raise RuntimeError(f"train at {size}M failed; see {log.name}")
        state = sb.model_state_bytes(run, json.load(open(os.path.join(run, "data", "meta.json")))["num_items"])
        out = {"size": f"{size}M", "model_state_gib": round(state / GIB, 2)}
        for name in sorted(os.listdir(os.path.join(run, "train_workers"))):
            info = json.load(open(os.path.join(run, "train_workers", name)))
            if info["pid"] in peaks.peak:
                out[f"rank{info['rank']}"] = {"rss_less_state": round((peaks.peak[info["pid"]] - state) / GIB, 2),
                                              "private_less_state": round((peaks.private[info["pid"]] - state) / GIB, 2)}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
