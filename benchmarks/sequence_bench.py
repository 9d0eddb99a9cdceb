"""All-position against per-prefix training of the causal models on MovieLens-100K: -> benchmarks/sequence.md.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/sequence_bench.py            # ~6 min on 2 cores
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/sequence_bench.py --quick --out /tmp/seq.md

For SASRec, GRU4Rec and HSTU at their shipped sizes, the same loss (list-wise sampled softmax, the
shipped negatives) trained two ways on one thread:

- per prefix: one (history window, target) sample per row, the encoder run once per target;
- all positions: one window of up to max_len items per row, the encoder run once per window and every
  position scored against its next item.

Throughput is training targets per second of one core, in process (`fit_in_process`'s Trainer and batch
builder, timed per part: building the batches, the forward pass split into the encoder and the loss,
and backward with the optimizer step), and through the real train stage on Ray Train (1 worker, 1 CPU)
for the whole epoch. The arithmetic a step must do is estimated from the model's matrix products.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_report

MODELS = ("sasrec", "gru4rec", "hstu")
TARGET = 10.0


def _cfg(model: str, targets: str, run_dir: str, epochs: int):
    from ray_recall.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(os.path.join("configs", f"ml100k_{model}.yaml"))
    over = {"run_dir": run_dir, "train.targets": targets, "train.softmax": "sampled", "train.epochs": epochs,
            "train.early_stopping_patience": 0, "train.num_threads": 1, "train.num_workers": 1,
            "train.cpus_per_worker": 1.0}
    if cfg.train.num_negatives == 0:
        over["train.num_negatives"] = 256
    if targets == "per_prefix":  # the same number of targets per step: batch_size windows hold ~batch x positions
        over["train.batch_size"] = 1024
    return cfg.replace(**over)


def in_process(model: str, targets: str, run_dir: str, steps: int) -> dict:
    """Seconds per part for `steps` steps (after 3 of warm-up), targets per step."""
    import torch

    from ray_recall.rundir import RunDir
    from ray_recall.stages.train.batches import split_batches
    from ray_recall.stages.train.loop import Trainer
    from ray_recall.stages.train.step import batch_loss

    torch.set_num_threads(1)
    cfg = _cfg(model, targets, run_dir, 1)
    run = RunDir(run_dir)
    trainer = Trainer(cfg, run)
    rows = run.read_parquet("data", "sequences", columns=["user_idx", "items", "times", "length"])
    builder = trainer.builder(0)
    t = {"data": 0.0, "encoder": 0.0, "loss": 0.0, "backward": 0.0}
    n_targets = n_steps = 0
    offset = 0
    model_obj = trainer.model.train()
    encode = model_obj.forward
    while n_steps < steps + 3:
        t0 = time.perf_counter()
        chunk = builder(rows.slice(offset % rows.num_rows, trainer.rows_per_chunk))
        offset += trainer.rows_per_chunk
        t_data = time.perf_counter() - t0
        batches = list(split_batches(chunk, cfg.train.batch_size))
        for batch in batches:
            if n_steps >= steps + 3:
                break
            warm = n_steps >= 3
            t0 = time.perf_counter()
            with torch.no_grad():  # the encoder alone (towers), to split the forward pass
                encode(batch)
            t1 = time.perf_counter()
            loss, k = batch_loss(model_obj, batch, cfg.train, trainer.tables)
            t2 = time.perf_counter()
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimizer.step()
            t3 = time.perf_counter()
            if warm:
                t["encoder"] += t1 - t0
                t["loss"] += max((t2 - t1) - (t1 - t0), 0.0)  # forward with the loss, minus the towers alone
                t["backward"] += t3 - t2
                n_targets += k
            n_steps += 1
        t["data"] += t_data * (len(batches) and min(len(batches), steps) / len(batches))
    total = t["encoder"] + t["loss"] + t["backward"] + t["data"]
    return {"targets": n_targets, "steps": steps, **t, "total": total, "targets_per_s": n_targets / total,
            "batch": cfg.train.batch_size}


def ray_train(model: str, targets: str, run_dir: str, epochs: int) -> dict:
    from ray_recall.pipeline import run_stage

    summary = run_stage(_cfg(model, targets, run_dir, epochs), "train", force=True, log=lambda *_: None)
    steady = summary["history"][1:] or summary["history"]
    return {"targets_per_s": sum(h["samples"] for h in steady) / sum(h["epoch_seconds"] for h in steady),
            "epoch_seconds": [h["epoch_seconds"] for h in summary["history"]], "fit_seconds": summary["fit_seconds"]}


def step_flops(model: str, targets: str, run_dir: str) -> float:
    """Multiply-adds of one training step's forward pass per target (encoder and loss), from the shapes."""
    from ray_recall.rundir import RunDir

    cfg = _cfg(model, targets, run_dir, 1)
    meta = RunDir(run_dir).read_meta()
    D, L, N = cfg.model.embedding_dim, cfg.data.max_len, cfg.train.num_negatives
    blocks = cfg.model.params.get("num_blocks", 1)
    if model == "gru4rec":
        H = cfg.model.params.get("hidden_size", D)
        per_position = 3 * (D * H + H * H) + H * D
    elif model == "sasrec":
        per_position = blocks * (3 * D * D + D * D + 2 * D * D + 2 * L * D)
    else:  # hstu: uvqk (4 D^2), output (D^2), attention (2 L D)
        per_position = blocks * (4 * D * D + D * D + 2 * L * D)
    mean_len = meta["num_interactions"] / meta["num_sequence_users"]
    history = min(L, mean_len / 2)  # a per-prefix sample's window, on average
    loss = (1 + N) * D
    if targets == "per_prefix":
        return history * per_position + loss
    return per_position + loss


def measure(models, steps: int, epochs: int, init_ray_cpus: int = 3) -> dict:
    """Both recipes of every model, in process and on Ray Train; {(model, targets): figures}."""
    from ray_recall.config import PipelineConfig
    from ray_recall.rundir import RunDir
    from ray_recall.runtime import init_ray
    from ray_recall.stages.preprocess import preprocess

    work = tempfile.mkdtemp(prefix="ray_recall_seq_bench_")
    run_dir = os.path.join(work, "run")
    preprocess(PipelineConfig.from_yaml("configs/ml100k_sasrec.yaml").replace(run_dir=run_dir), RunDir(run_dir),
               log=lambda *_: None)
    results = {}
    for m in models:
        for targets in ("per_prefix", "all_positions"):
            r = in_process(m, targets, run_dir, steps)
            r["flops"] = step_flops(m, targets, run_dir)
            results[(m, targets)] = r
            print(f"[in-process] {m} {targets}: {r['targets_per_s']:,.0f} targets/s", flush=True)
    init_ray(num_cpus=init_ray_cpus, quiet=True)
    for m in models:
        for targets in ("per_prefix", "all_positions"):
            results[(m, targets)]["ray"] = ray_train(m, targets, run_dir, epochs)
            print(f"[ray train] {m} {targets}: {results[(m, targets)]['ray']['targets_per_s']:,.0f} targets/s", flush=True)
    return results


def report_lines(results: dict, models) -> list[str]:
    """The Markdown sections of the comparison (no title)."""
    lines = ["MovieLens-100K, the shipped configs' model sizes and negatives, list-wise sampled softmax both ways; "
             "one thread. A *target* is one (history, next item) pair scored: a per-prefix sample, or one position "
             "of a window.", "",
             "| model | training | batch | targets/s in process | targets/s, Ray Train (1 worker) | all / per prefix |",
             "|---|---|---:|---:|---:|---:|"]
    verdicts = []
    for m in models:
        pp, ap_ = results[(m, "per_prefix")], results[(m, "all_positions")]
        for targets, r in (("per prefix", pp), ("all positions", ap_)):
            ratio = r["ray"]["targets_per_s"] / pp["ray"]["targets_per_s"]
            lines.append(f"| {m} | {targets} | {r['batch']} {'samples' if targets == 'per prefix' else 'windows'} "
                         f"| {r['targets_per_s']:,.0f} | {r['ray']['targets_per_s']:,.0f} | {ratio:.1f}x |")
        verdicts.append((m, ap_["ray"]["targets_per_s"] / pp["ray"]["targets_per_s"],
                         ap_["targets_per_s"] / pp["targets_per_s"]))
    lines += ["", f"Target: all positions >= {TARGET:.0f}x per prefix, targets per second per core:", ""]
    for m, ray_ratio, local_ratio in verdicts:
        lines.append(f"- {m}: {ray_ratio:.1f}x on Ray Train ({local_ratio:.1f}x in process): "
                     f"{'met' if ray_ratio >= TARGET else '**missed**'}.")
    lines += ["", "Where a step's time goes (in process, seconds per 1,000 targets):", "",
              "| model | training | data (batches, negatives) | encoder | loss | backward + Adam | forward multiply-adds "
              "per target | achieved GFLOP/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (m, targets), r in results.items():
        per_k = {k: 1000 * r[k] / max(r["targets"], 1) for k in ("data", "encoder", "loss", "backward")}
        gflops = 2 * 3 * r["flops"] * r["targets"] / r["total"] / 1e9  # forward + backward ~ 3x forward
        lines.append(f"| {m} | {targets.replace('_', ' ')} | {per_k['data']:.3f} | {per_k['encoder']:.3f} | "
                     f"{per_k['loss']:.3f} | {per_k['backward']:.3f} | {r['flops']:,.0f} | {gflops:.1f} |")
    lines += ["", "Multiply-adds are the matrix products of the model's forward pass per target (the encoder's "
              "projections and attention, the GRU's gates) and of the sampled softmax; per prefix, the encoder "
              "runs over a whole history window for each target. Achieved GFLOP/s counts forward + backward as "
              "3x the forward products over the whole step time; one core of this machine peaks at a few tens.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--steps", type=int, default=30, help="in-process steps timed per recipe (after 3 of warm-up)")
    ap.add_argument("--epochs", type=int, default=3, help="Ray Train epochs per recipe (the first is warm-up)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/sequence.md")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.epochs = 5, 2
    results = measure(args.models, args.steps, args.epochs)
    import ray

    ray.shutdown()
    lines = ["# All-position against per-prefix training (SASRec, GRU4Rec, HSTU)", "",
             f"Command: `{' '.join(shlex.quote(a) for a in ['.venv/bin/python', *sys.argv])}`", "",
             f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
             f"recorded {time.strftime('%Y-%m-%d %H:%M')}.", "", *report_lines(results, args.models)]
    write_report(args.out, lines, smoke="a few steps and 2 epochs" if args.quick else None)


if __name__ == "__main__":
    main()
