"""Per-stage timings of the demo pipeline (MovieLens-100K, DSSM list-wise), written to benchmarks/pipeline.md.

    .venv/bin/python benchmarks/pipeline_bench.py [--config configs/ml100k_dssm.yaml] [--out benchmarks/pipeline.md]

Runs every stage from scratch in a temporary run directory on a local Ray started
in-process, and reports wall time per stage, Ray Train's fixed cost (fit time minus the
time spent in epochs), training throughput and the test metrics beside most-popular.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from report import write_report

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ml100k_dssm.yaml")
    ap.add_argument("--out", default="benchmarks/pipeline.md")
    args = ap.parse_args()

    from ray_recall.config import PipelineConfig
    from ray_recall.runtime import init_ray
    from ray_recall.pipeline import run_pipeline

    t0 = time.perf_counter()
    init_ray(quiet=True)
    ray_start = time.perf_counter() - t0
    run_dir = tempfile.mkdtemp(prefix="ray_recall_bench_")
    cfg = PipelineConfig.from_yaml(args.config).replace(run_dir=run_dir)
    t0 = time.perf_counter()
    out = run_pipeline(cfg, force=True, log=print)
    total = time.perf_counter() - t0
    tr = out["train"]
    metrics = out["evaluate"]["metrics"]
    ks = cfg.eval.ks
    lines = [
        "# Pipeline timings: the demo (`make demo`)",
        "",
        f"Command: `.venv/bin/python benchmarks/pipeline_bench.py --config {args.config}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"local Ray started in-process. Recorded {time.strftime('%Y-%m-%d')}.",
        f"Model {cfg.model.name}, mode {cfg.train.mode}, {cfg.train.num_negatives} x {cfg.train.sampler} negatives, "
        f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, {cfg.train.num_workers} worker(s).",
        "",
        "| stage | wall seconds | notes |",
        "|---|---:|---|",
        f"| ray.init | {ray_start:.1f} | local, in-process |",
        f"| preprocess | {out['timings']['preprocess']:.1f} | read, vocab, sequences, splits, popularity (in the driver: a log under "
        f"data.in_process_max_rows; else Ray Data) |",
        f"| train | {out['timings']['train']:.1f} | `fit()`: {tr['train_seconds']:.1f} s in epochs "
        f"({tr['samples_per_second']:.0f} samples/s), {tr['fit_seconds'] - tr['train_seconds']:.1f} s Ray Train fixed cost |",
        f"| embed | {out['timings']['embed']:.1f} | actor pool, {out['embed']['num_items']} items + {out['embed']['num_users']} users |",
        f"| index | {out['timings']['index']:.1f} | FAISS {cfg.index.factory} |",
        f"| evaluate | {out['timings']['evaluate']:.1f} | exact full ranking, {out['evaluate']['num_users']} test users |",
        f"| **total** | **{total:.1f}** | |",
        "",
        "Test metrics (leave-last-out, exact full ranking over all items, seen items masked):",
        "",
        "| method | " + " | ".join(f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "mrr")) + " |",
        "|---|" + "---:|" * (3 * len(ks)),
    ]
    for name, vals in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[f'{m}@{k}']:.4f}" for k in ks for m in ("recall", "ndcg", "mrr")) + " |")
    lines += ["", "Validation Recall@10 per epoch: " + ", ".join(f"{h['val_recall@10']:.4f}" for h in tr["history"])
              + f" (best epoch {tr['best_epoch'] + 1} is kept).", ""]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
