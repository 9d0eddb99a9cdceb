"""Training throughput on MovieLens-100K: ray_recall on Ray Train (1 and 2 workers) beside torch-rechub, to benchmarks/train.md.

    bash benchmarks/peer_env.sh                                       # once: .venv-peer with torch-rechub 0.9.0
    RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/train_bench.py
    RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/train_bench.py --quick \
        --out /tmp/train_smoke.md                                     # smoke run: 5% of the data, 2 epochs

DSSM, YouTubeDNN and MIND train on the same data (MovieLens-100K from the recbole wheel) with the
same model sizes, negatives per positive and batch sizes on both sides, all taken from torch-rechub's
MovieLens examples (benchmarks/peer_train.py holds them). The peer runs first, as a subprocess of
.venv-peer with 2 torch threads; then a local Ray starts in-process, the data stage runs once, and
ray_recall's real train stage (`run_stage(cfg, "train")`: Ray Train TorchTrainer, Ray Data ingest,
DDP) runs every model with 1 and with 2 workers, each worker 1 CPU and 1 torch thread.

A *sample* is one (user, positive) training row with its negatives on both sides (torch-rechub's
point-wise DSSM example stores the positive and each negative as rows of their own: 4 rows make one
sample there). Throughput is steady state: the samples of every epoch after the first divided by
their wall seconds (the first epoch, with its warm-up, is reported apart). Per core divides by the
cores a side is given: ours workers x torch threads (1 each; cpus_per_worker 1), the peer its 2
torch threads (its DataLoader workers share the same 2 cores). The peer runs with its example's
DataLoader workers and, where that is not 0, with none too; the target compares against the faster.
A Ray-free run of ray_recall's in-process trainer (same batches and steps, 1 thread) shows what the
model costs alone, apart from Ray Data's ingest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from peer_train import EXAMPLES, NEG_RATIO  # noqa: E402  (plain constants; the module imports torch-rechub lazily)
from report import write_report as write_markdown

MODELS = ("dssm", "youtubednn", "mind")
TARGET = 1.5  # ours per core / peer per core
PEER_THREADS = 2
RAY_CPUS = 3  # logical CPUs: 2 workers x 1 CPU, and one left for Ray Data's read tasks (RAY_NOTES: 2 x 1 of 2 hangs)
# The figures for torch-rechub 0.9.0 (rows/s as its trainer counts them, 2 threads).
QUOTED = {"dssm": 28_000, "youtubednn": 40_000, "mind": 18_000}

# ray_recall's models configured like the peer's (peer_train.build_model). Embedding sizes: every
# feature 16 wide; DSSM towers 256-128-64 with PReLU; YouTubeDNN user MLP 128-64-16 with user id
# and attributes beside the mean history, items a 16-dim table; MIND 4 interests, 3 routing
# iterations, 16 dims. Batch sizes are in samples: the peer's DSSM batch of 4096 point-wise rows is
# 1024 samples (4096 scored user-item pairs), so ours takes 1024 samples a step there too.
OURS = {
    "dssm": {"model.embedding_dim": 64, "train.mode": "pointwise",
             "train.batch_size": EXAMPLES["dssm"]["batch_size"] // (1 + NEG_RATIO),
             "model.params": {"feature_dim": 16, "hidden_units": [256, 128], "dropout_rates": 0.0, "activation": "prelu",
                              "use_user_id": True, "use_history": True, "normalize": True}},
    "youtubednn": {"model.embedding_dim": 16, "train.mode": "listwise", "train.batch_size": EXAMPLES["youtubednn"]["batch_size"],
                   "model.params": {"feature_dim": 16, "hidden_units": [128, 64], "use_user_id": True, "normalize": True}},
    "mind": {"model.embedding_dim": 16, "train.mode": "listwise", "train.batch_size": EXAMPLES["mind"]["batch_size"],
             "model.params": {"num_interests": 4, "routing_iterations": 3, "normalize": True}},
}


def ml100k_files() -> dict[str, str]:
    from ray_recall.stages.preprocess.sources import bundled_ml100k_dir

    root = bundled_ml100k_dir()
    return {k: os.path.join(root, f"ml-100k.{k}") for k in ("inter", "user", "item")}


def steady(epochs: list[dict], seconds_key: str) -> dict:
    """Throughput over every epoch but the first (all of them if there is only one)."""
    rest = epochs[1:] or epochs
    samples = sum(e["samples"] for e in rest)
    secs = sum(e[seconds_key] for e in rest)
    cpu = sum(e.get("cpu_seconds", float("nan")) for e in rest)
    return {"samples_per_s": samples / secs, "cpu_per_wall": cpu / secs, "epoch_s": secs / len(rest),
            "first_epoch_s": epochs[0][seconds_key], "measured_epochs": len(rest)}


# ---------------------------------------------------------------------------------------------
# The peer


def run_peer(model: str, loader_workers: int | None, args, work: str, log) -> dict:
    """One torch-rechub run in .venv-peer; loader_workers None = the example's DataLoader workers."""
    files = ml100k_files()
    tag = f"{model}_lw{'example' if loader_workers is None else loader_workers}"
    out = os.path.join(work, f"peer_{tag}.json")
    cmd = [args.peer_python, os.path.join(HERE, "peer_train.py"), "--model", model, "--inter", files["inter"],
           "--user", files["user"], "--item", files["item"], "--epochs", str(args.epochs), "--threads", str(PEER_THREADS),
           "--train-fraction", str(args.train_fraction), "--out", out]
    if loader_workers is not None:
        cmd += ["--loader-workers", str(loader_workers)]
    t0 = time.perf_counter()
    with open(os.path.join(work, f"peer_{tag}.log"), "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": str(PEER_THREADS)}).returncode
    if rc != 0:
        with open(os.path.join(work, f"peer_{tag}.log")) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"peer run {tag} failed (exit {rc}):\n{tail}")
    with open(out) as f:
        r = json.load(f)
    r["wall_seconds"] = time.perf_counter() - t0
    r["steady"] = steady(r["epochs"], "seconds")
    r["steady"]["rows_per_s"] = r["steady"]["samples_per_s"] * r["rows_per_sample"]
    r["cores"] = PEER_THREADS
    r["as_example"] = loader_workers is None or loader_workers == EXAMPLES[model]["loader_workers"]
    log(f"[peer] {model}, {r['loader_workers']} DataLoader workers: {r['steady']['samples_per_s']:,.0f} samples/s "
        f"({r['steady']['rows_per_s']:,.0f} rows/s); epochs {[round(e['seconds'], 2) for e in r['epochs']]} s")
    return r


def peer_variants(model: str, args) -> list[int | None]:
    """The example's DataLoader workers, and none at all where the example uses some (often faster on 2 cores)."""
    if args.peer_loader_workers is not None:
        return [args.peer_loader_workers]
    return [None] + ([0] if EXAMPLES[model]["loader_workers"] else [])


# ---------------------------------------------------------------------------------------------
# Ours


def prepare_data(work: str, train_fraction: float, log) -> str:
    """Run the data stage once; with train_fraction < 1 keep a seeded sample of the training samples."""
    import numpy as np
    import pyarrow.parquet as pq

    from ray_recall.config import PipelineConfig
    from ray_recall.pipeline import run_stage
    from ray_recall.rundir import RunDir

    run_dir = os.path.join(work, "run")
    cfg = PipelineConfig.from_yaml(os.path.join("configs", "ml100k_dssm.yaml")).replace(run_dir=run_dir)
    run_stage(cfg, "preprocess", force=True, log=lambda s: log("  " + s.splitlines()[0]))
    if train_fraction < 1.0:
        run = RunDir(run_dir)
        path = run.path("data", "train")
        table = pq.read_table(path)
        keep = np.sort(np.random.default_rng(0).choice(table.num_rows, max(1, int(table.num_rows * train_fraction)),
                                                        replace=False))
        shutil.rmtree(path)
        os.makedirs(path)
        pq.write_table(table.take(keep), os.path.join(path, "sample.parquet"))
        meta = run.read_json("data", "meta.json")
        meta["samples"]["train"] = len(keep)
        run.write_json(meta, "data", "meta.json")
    return run_dir


def ours_config(model: str, workers: int, epochs: int, run_dir: str):
    """The model's shipped config with the peer's sizes, negatives and batch (OURS) and the given workers."""
    from ray_recall.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(os.path.join("configs", f"ml100k_{model}.yaml"))
    return cfg.replace(**{
        "run_dir": run_dir, **OURS[model], "train.num_negatives": NEG_RATIO, "train.sampler": "word2vec",
        "train.in_batch_negatives": False, "train.epochs": epochs, "train.early_stopping_patience": 0,
        "train.num_workers": workers, "train.cpus_per_worker": 1.0, "train.num_threads": 1, "train.embedding_l2": 0.0,
    })


def run_ours(model: str, workers: int, args, run_dir: str, log, weak: bool = False, grad_sync: str = "auto") -> dict:
    """The real train stage (Ray Train); throughput from its per-epoch history (training.json).

    weak: every worker takes the whole batch (the global batch grows with the workers: weak scaling)
    instead of a 1/workers share of it. grad_sync: train.grad_sync (the default, auto, or allreduce).
    """
    from ray_recall.pipeline import run_stage

    cfg = ours_config(model, workers, args.epochs, run_dir).replace(**{"train.grad_sync": grad_sync})
    if weak:
        cfg = cfg.replace(**{"train.batch_size": cfg.train.batch_size * workers})
    summary = run_stage(cfg, "train", force=True, log=lambda s: None)
    history = summary["history"]
    r = {"model": model, "workers": workers, "cores": workers * cfg.train.num_threads, "batch_size": cfg.train.batch_size,
         "mode": cfg.train.mode, "epochs": history, "fit_seconds": summary["fit_seconds"],
         "train_seconds": summary["train_seconds"], "steady": steady(history, "epoch_seconds"),
         "train_samples": history[0]["samples"], "weak": weak, "grad_sync": grad_sync}
    r["fixed_seconds"] = r["fit_seconds"] - r["train_seconds"]
    log(f"[ours] {model} x{workers}{' (weak scaling)' if weak else ''} grad_sync={grad_sync}: "
        f"{r['steady']['samples_per_s']:,.0f} samples/s; epochs "
        f"{[h['epoch_seconds'] for h in history]} s; fit {r['fit_seconds']:.1f}s")
    return r


def run_in_process(model: str, args, run_dir: str, log) -> dict:
    """The same batches, loss and optimizer steps without Ray (`fit_in_process`, 1 torch thread, in-memory shuffle).

    What the model and the batch building cost alone; the gap to the 1-worker Ray Train run is the
    price of Ray Data's streaming ingest. Epochs are timed between the trainer's per-epoch log calls.
    """
    import torch

    from ray_recall.rundir import RunDir
    from ray_recall.stages.train.local import fit_in_process

    cfg = ours_config(model, 1, args.epochs, run_dir)
    threads = torch.get_num_threads()
    stamps = [(time.perf_counter(), time.process_time())]
    try:
        fit_in_process(cfg, RunDir(run_dir), log=lambda line: stamps.append((time.perf_counter(), time.process_time())))
    finally:
        torch.set_num_threads(threads)
    n = RunDir(run_dir).read_json("data", "meta.json")["samples"]["train"]
    epochs = [{"samples": n, "seconds": b[0] - a[0], "cpu_seconds": b[1] - a[1]} for a, b in zip(stamps, stamps[1:])]
    r = {"model": model, "epochs": epochs, "steady": steady(epochs, "seconds"), "cores": 1}
    log(f"[ours] {model} in-process: {r['steady']['samples_per_s']:,.0f} samples/s")
    return r


def ours_params(model: str, run_dir: str) -> int:
    from ray_recall.models import build_model
    from ray_recall.rundir import RunDir

    cfg = ours_config(model, 1, 1, run_dir)
    m = build_model(model, RunDir(run_dir).read_schema(), cfg.model.embedding_dim, cfg.model.params)
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# The report


def _sync_worker(rank: int, sizes: list[int], rounds: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from ray_recall.stages.train.comm import exchange_mean_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    timings = {}
    for numel in sizes:
        t = torch.randn(numel)
        for name, fn in (("all_reduce", lambda: dist.all_reduce(t)), ("exchange", lambda: exchange_mean_(t))):
            runs = []
            for _ in range(3):
                for _ in range(50):
                    fn()
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(rounds):
                    fn()
                runs.append((time.perf_counter() - t0) / rounds * 1e6)
            timings[f"{name} {numel}"] = sorted(runs)[1]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(timings, f)
    dist.destroy_process_group()


def gradient_sync_bench(params: dict[str, int], work: str, rounds: int = 1000) -> dict[str, dict[str, float]]:
    """Microseconds to average each model's gradient between 2 processes (1 thread each, no Ray):
    gloo's all-reduce (DDP's default) and the pairwise exchange the Train loop uses (ray_recall.stages.train.comm).
    Median of 3 rounds of `rounds` calls."""
    import torch.multiprocessing as mp

    sizes = sorted(set(params.values()))
    out = os.path.join(work, "sync.json")
    mp.spawn(_sync_worker, args=(sizes, rounds, os.path.join(work, "sync_store"), out), nprocs=2)
    timings = json.load(open(out))
    return {m: {"numel": n, "all_reduce_us": timings[f"all_reduce {n}"], "exchange_us": timings[f"exchange {n}"]}
            for m, n in params.items()}


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB"


PEER_TOWERS = {
    "dssm": "user: id, gender, age, occupation, zip, mean history (16 each) -> MLP 256-128-64 (BatchNorm, PReLU); "
            "item: id, first genre (16 each) -> MLP 256-128-64",
    "youtubednn": "user: id, gender, age, occupation, zip, mean history (16 each) -> MLP 128-64-16 (BatchNorm, ReLU); "
                  "item: 16-dim id table shared with the history",
    "mind": "history (16) -> capsule routing (4 interests, 3 iterations); user attributes (16 each) concatenated to "
            "each interest, projected to 16; item: 16-dim id table",
}
OUR_TOWERS = {
    "dssm": "user: id, age, gender, occupation, mean history (16 each) -> MLP 256-128-64 (PReLU); "
            "item: id, genres (pooled), year (16 each) -> MLP 256-128-64",
    "youtubednn": "user: id, age, gender, occupation, mean history (16 each) -> MLP 128-64-16 (ReLU); "
                  "item: 16-dim id table",
    "mind": "history (16) -> B2I routing (4 interests, 3 iterations), label-aware attention; item: 16-dim id table",
}


def _peer_label(p: dict) -> str:
    lw = p["loader_workers"]
    return f"torch-rechub, {lw} DataLoader workers" + (" (as its example)" if p["as_example"] else "")


def write_report(path: str, args, command: str, info: dict, peers: dict, ours: list[dict], local: dict,
                 ray_init_s: float, data_s: float, params: dict, sync: dict, sequence: dict | None = None) -> None:
    import ray
    import torch

    full = args.train_fraction == 1.0 and args.epochs >= 3
    any_peer = next((v[0] for v in peers.values() if v), None)
    lines = [
        "# Training throughput on MovieLens-100K: ray_recall on Ray Train beside torch-rechub",
        "",
        f"Command: `{command}` (after `bash benchmarks/peer_env.sh`)",
        "",
        f"Machine: {machine_line()}; load average {info['load_start'][0]:.2f} / {info['load_start'][1]:.2f} / "
        f"{info['load_start'][2]:.2f} (1 / 5 / 15 min) at the start, {info['load_end'][0]:.2f} / "
        f"{info['load_end'][1]:.2f} / {info['load_end'][2]:.2f} at the end. Python {platform.python_version()}, "
        f"PyTorch {torch.__version__}, Ray {ray.__version__}"
        + (f"; peer: torch-rechub {any_peer['torch_rechub']} with PyTorch {any_peer['torch']} in its own venv "
           "(.venv-peer)" if any_peer else "")
        + f". Recorded {info['started']}; the whole run took {info['total_s'] / 60:.1f} min.",
        "",
    ]
    if max(info["load_start"][0], info["load_end"][0]) > 1.0:
        lines += ["**Shared machine**: other work ran beside this benchmark (load averages above). Every figure is "
                  "then slower than on an idle machine, and unevenly so: the peer's 2 OpenMP threads wait for each "
                  "other whenever one of them is descheduled, which 1-thread workers never do.", ""]
    if not full:
        lines += [f"**Not the full benchmark** (smoke run): {args.train_fraction:.0%} of the training data, "
                  f"{args.epochs} epochs. Epochs this short are dominated by per-epoch start-up costs, so the "
                  "figures below say nothing about steady-state throughput.", ""]
    lines += [
        "## What is measured",
        "",
        "- Same data: MovieLens-100K as bundled with the recbole 1.2.1 wheel, each user's interactions in time "
        "order; every position after the first is a training target with the earlier items (at most 50) as "
        "history. ray_recall holds out each user's last two interactions (validation, test), torch-rechub only "
        f"the last, so the training sets differ by one sample per user ({_train_sizes(peers, ours)}).",
        f"- Same work per sample: a *sample* is one (user, positive) training row with its {NEG_RATIO} negatives, "
        "drawn by popularity^0.75 on both sides (torch-rechub once before training, ray_recall per batch and "
        "never one of the user's own items). torch-rechub's point-wise DSSM example stores the positive and "
        f"each negative as rows of their own, so there {1 + NEG_RATIO} of its rows make one sample and its batch "
        f"of {EXAMPLES['dssm']['batch_size']} rows is {EXAMPLES['dssm']['batch_size'] // (1 + NEG_RATIO)} samples; "
        "ray_recall's DSSM takes the same "
        f"{EXAMPLES['dssm']['batch_size'] // (1 + NEG_RATIO)} samples ({EXAMPLES['dssm']['batch_size']} scored "
        "user-item pairs) a step. List-wise, one row is one sample on both sides.",
        "- Same models: torch-rechub's MovieLens examples (`examples/matching/run_ml_*.py`) set the sizes, modes, "
        "negatives and batches; ray_recall's models are configured to match (settings at the end).",
        "- Steady state: the samples of every epoch after the first over their wall seconds; the first epoch "
        "(warm-up) is reported apart. Ray Train: the per-epoch `samples` and `epoch_seconds` each run reports "
        "(model/training.json); the clock runs from the first batch request to the last optimizer step, so the "
        "per-epoch validation and checkpoint are outside it. torch-rechub: `MatchTrainer.train_one_epoch` timed "
        "inside `MatchTrainer.fit`.",
        f"- Cores: ray_recall = workers x torch threads, 1 CPU and 1 thread per worker (a local Ray with {RAY_CPUS} "
        f"logical CPUs, so Ray Data's read tasks find one); torch-rechub = its {PEER_THREADS} torch threads "
        "(`torch.set_num_threads(2)`; DataLoader worker processes, where used, share the same 2 cores). "
        "Per core = samples/s / cores. *CPU / wall*: CPU seconds the training processes used per wall second "
        "(ours: the Train workers, without Ray Data's read tasks in processes of their own; peer: its process "
        "and DataLoader workers): below the cores a side is given, it was waiting (for data, or for a CPU on a "
        "shared machine).",
        "- *In-process*: ray_recall's `fit_in_process` (same batches, loss and optimizer step, an in-memory "
        "shuffle instead of Ray Data, no Ray at all, 1 thread), to show what Ray's ingest costs.",
        "",
        "## Throughput",
        "",
        "| model | trainer | workers x threads | batch (samples) | steady samples/s | per core | CPU / wall "
        "| first epoch s | steady epoch s | per core / best peer's |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts, weak_lines = [], []
    for m in [m for m in MODELS if peers.get(m) or any(o["model"] == m for o in ours)]:
        best = max(peers.get(m, []), key=lambda p: p["steady"]["samples_per_s"], default=None)
        best_pc = best["steady"]["samples_per_s"] / best["cores"] if best else float("nan")
        rows = [(_peer_label(p), f"1 x {PEER_THREADS}", p["batch_size"] // p["rows_per_sample"], p["steady"], p["cores"])
                for p in peers.get(m, [])]
        rows += [("ray_recall, Ray Train" + (", whole batch per worker" if o.get("weak") else "")
                  + (f", grad_sync={o['grad_sync']}" if o.get("grad_sync", "auto") != "auto" else ""), f"{o['workers']} x 1",
                  o["batch_size"], o["steady"], o["cores"]) for o in ours if o["model"] == m]
        if m in local:
            rows.append(("ray_recall in-process (no Ray)", "1 x 1", OURS[m]["train.batch_size"], local[m]["steady"], 1))
        for label, wt, batch, s, cores in rows:
            pc = s["samples_per_s"] / cores
            ratio = pc / best_pc
            bold = "**" if label.startswith("ray_recall, Ray") else ""
            lines.append(f"| {m} | {label} | {wt} | {batch} | {s['samples_per_s']:,.0f} | {pc:,.0f} | {s['cpu_per_wall']:.2f} "
                         f"| {s['first_epoch_s']:.2f} | {s['epoch_s']:.2f} | {bold}{ratio:.2f}{bold} |")
        for o in [o for o in ours if o["model"] == m and best and not o.get("weak") and o.get("grad_sync", "auto") == "auto"]:
            verdicts.append((m, o["workers"], o["steady"]["samples_per_s"] / o["cores"] / best_pc, best))
        for o in [o for o in ours if o["model"] == m and best and o.get("weak")]:
            weak_lines.append(f"- {m}, {o['workers']} workers, {o['batch_size'] // o['workers']} samples per worker "
                              f"(global {o['batch_size']}): {o['steady']['samples_per_s'] / o['cores'] / best_pc:.2f}x.")
    lines += ["", f"## Target: ray_recall on Ray Train >= {TARGET}x torch-rechub per core", "",
              "Against the faster of the peer's two DataLoader settings (its example's, and none).", ""]
    for m, w, ratio, best in verdicts:
        lines.append(f"- {m}, {w} worker{'s' if w > 1 else ''}: {ratio:.2f}x: {'met' if ratio >= TARGET else '**missed**'}.")
    if not full:
        lines.append("- (smoke run: these verdicts mean nothing)")
    if weak_lines:
        lines += ["", "Not the target's setting, for reading it: weak scaling, each worker taking the peer's whole "
                  "batch (the global batch doubles, so the optimization differs):", ""] + weak_lines
    if any_peer:
        lines += ["", "torch-rechub in its own unit, DataLoader rows/s (the issue quoted about "
                  + ", ".join(f"{QUOTED[m] / 1000:.0f}k for {m}" for m in MODELS) + ", at 2 threads): "
                  + "; ".join(f"{m} {p['steady']['rows_per_s']:,.0f} with {p['loader_workers']} DataLoader workers"
                              for m, ps in peers.items() for p in ps) + "."]
    lines += [
        "",
        "## Ray's fixed costs (apart from throughput)",
        "",
        f"`ray.init` (local, in-process, {RAY_CPUS} logical CPUs): {ray_init_s:.1f} s. Data stage (once, "
        f"shared by every run): {data_s:.1f} s. Per `fit()`: fixed = fit seconds - seconds in epochs (worker and "
        "process-group start, dataset setup, the per-epoch validation on rank 0 and checkpoint writes, teardown). "
        "The first epoch's excess over a steady one is the ingest's and the model's warm-up.",
        "",
        "| model | workers | fit s | in epochs s | fixed s | first epoch - steady epoch s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for o in ours:
        lines.append(f"| {o['model']} | {o['workers']}{' (whole batch each)' if o.get('weak') else ''}"
                     f"{' grad_sync=' + o['grad_sync'] if o.get('grad_sync', 'auto') != 'auto' else ''} | {o['fit_seconds']:.1f} | {o['train_seconds']:.1f} "
                     f"| {o['fixed_seconds']:.1f} | {o['steady']['first_epoch_s'] - o['steady']['epoch_s']:.2f} |")
    if sync:
        lines += ["", "## Averaging a gradient between 2 workers", "",
                  "What each step of a 2-worker run pays to average the model's gradient: gloo's all-reduce (DDP's "
                  "default) and the pairwise exchange ray_recall's Train loop registers as DDP's communication hook "
                  "for gradients up to 1 MiB on CPU (`ray_recall/stages/train/comm.py`). Two processes, 1 thread each, no "
                  "Ray running; median of 3 rounds of 1,000 calls.", "",
                  "| model | gradient floats | gloo all-reduce µs | pairwise exchange µs |", "|---|---:|---:|---:|"]
        for m, r in sync.items():
            lines.append(f"| {m} | {r['numel']:,} | {r['all_reduce_us']:,.0f} | {r['exchange_us']:,.0f} |")
    pairs = [(a, b) for a in ours for b in ours if a["model"] == b["model"] and a["workers"] == b["workers"] > 1
             and not a.get("weak") and not b.get("weak") and a.get("grad_sync", "auto") == "auto"
             and b.get("grad_sync") == "allreduce"]
    if pairs:
        lines += ["", "## `train.grad_sync`: the whole fit, auto (the exchange) against allreduce", "",
                  "The same 2-worker fits with `train.grad_sync: auto` (which takes the pairwise exchange for these "
                  "gradients) and `allreduce` (DDP's own), one after the other in this run: the default is the "
                  "faster.", "",
                  "| model | workers | auto samples/s | allreduce samples/s | auto / allreduce |", "|---|---:|---:|---:|---:|"]
        for a, b in pairs:
            sa, sb = a["steady"]["samples_per_s"], b["steady"]["samples_per_s"]
            lines.append(f"| {a['model']} | {a['workers']} | {sa:,.0f} | {sb:,.0f} | {sa / sb:.2f}x |")
    if sequence:
        from sequence_bench import MODELS as SEQ_MODELS, report_lines

        lines += ["", "## Sequence models: all positions against per prefix", "",
                  *report_lines(sequence, [m for m in SEQ_MODELS if (m, "per_prefix") in sequence])]
    lines += ["", "## Settings", "", "| model | trainer | objective | batch | towers | parameters |",
              "|---|---|---|---|---|---:|"]
    for m in MODELS:
        if peers.get(m):
            p = peers[m][0]
            lines.append(f"| {m} | torch-rechub | {'point-wise BCE' if p['mode'] == 0 else 'list-wise softmax'}, "
                         f"{NEG_RATIO} negatives | {p['batch_size']} rows | {PEER_TOWERS[m]} | {p['params']:,} |")
        if m in params:
            c = OURS[m]
            lines.append(f"| {m} | ray_recall | {'point-wise BCE' if c['train.mode'] == 'pointwise' else 'list-wise softmax'}, "
                         f"{NEG_RATIO} negatives | {c['train.batch_size']} samples | {OUR_TOWERS[m]} | {params[m]:,} |")
    per_epoch = [f"torch-rechub {m} ({p['loader_workers']} loader workers): "
                 + ", ".join(f"{e['seconds']:.2f}" for e in p["epochs"]) for m, ps in peers.items() for p in ps]
    per_epoch += [f"Ray Train {o['model']} x{o['workers']}{' whole batch each' if o.get('weak') else ''}: " + ", ".join(f"{e['epoch_seconds']:.2f}" for e in o["epochs"])
                  for o in ours]
    per_epoch += [f"in-process {m}: " + ", ".join(f"{e['seconds']:.2f}" for e in r["epochs"]) for m, r in local.items()]
    lines += ["", "Seconds per epoch: " + "; ".join(per_epoch) + ".", ""]
    write_markdown(path, lines, echo=False)


def _train_sizes(peers: dict, ours: list[dict]) -> str:
    parts = []
    if ours:
        parts.append(f"ray_recall {ours[0]['train_samples']:,} samples")
    p = next((v[0] for v in peers.values() if v), None)
    if p:
        parts.append(f"torch-rechub {p['train_samples']:,.0f}")
    return ", ".join(parts) + " here"


def reproduce_command(argv: list[str]) -> str:
    """The command line as run, minus --work-dir (where the run directories went)."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
    keep, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a == "--work-dir":
            skip = True
        elif not a.startswith("--work-dir="):
            keep.append(a)
    return "RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 " + " ".join(shlex.quote(a) for a in [python, argv[0], *keep])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run; the first is warm-up, the rest are measured")
    ap.add_argument("--train-fraction", type=float, default=1.0, help="train on a seeded sample of the training data")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5%% of the training data, 2 epochs")
    ap.add_argument("--peer-python", default=os.path.join(".venv-peer", "bin", "python"))
    ap.add_argument("--peer-loader-workers", type=int, default=None, help="override the examples' DataLoader workers")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--no-weak-scaling", action="store_true",
                    help="leave out the multi-worker runs where each worker takes the whole batch")
    ap.add_argument("--skip-in-process", action="store_true", help="leave out the Ray-free reference runs")
    ap.add_argument("--skip-sequence", action="store_true",
                    help="leave out the all-position against per-prefix comparison of the causal models")
    ap.add_argument("--no-grad-sync", action="store_true",
                    help="leave out the multi-worker runs with train.grad_sync=allreduce beside the default (auto)")
    ap.add_argument("--out", default="benchmarks/train.md")
    ap.add_argument("--work-dir", default=None, help="keep run directories and raw JSON here (default: a temporary directory)")
    args = ap.parse_args()
    if args.quick:
        args.train_fraction, args.epochs = min(args.train_fraction, 0.05), min(args.epochs, 2)
    if not args.skip_peer and not os.path.exists(args.peer_python):
        ap.error(f"{args.peer_python} not found: run `bash benchmarks/peer_env.sh` first (or pass --skip-peer)")
    command = reproduce_command(sys.argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    info = {"started": time.strftime("%Y-%m-%d %H:%M"), "load_start": list(os.getloadavg())}
    t_all = time.perf_counter()
    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="ray_recall_train_bench_"))
    os.makedirs(work, exist_ok=True)
    log(f"[bench] working in {work}; load average {info['load_start'][0]:.2f}")

    # The peer first, before Ray starts, so Ray's idle processes do not share its cores.
    peers = {} if args.skip_peer else {m: [run_peer(m, lw, args, work, log) for lw in peer_variants(m, args)]
                                       for m in args.models}

    from ray_recall.runtime import init_ray

    t0 = time.perf_counter()
    init_ray(num_cpus=RAY_CPUS, quiet=True)
    ray_init_s = time.perf_counter() - t0
    log(f"[ours] ray.init {ray_init_s:.1f}s")
    t0 = time.perf_counter()
    run_dir = prepare_data(work, args.train_fraction, log)
    data_s = time.perf_counter() - t0
    log(f"[ours] data stage {data_s:.1f}s")
    ours, local, params = [], {}, {}
    for m in args.models:
        params[m] = ours_params(m, run_dir)
        for w in args.workers:
            ours.append(run_ours(m, w, args, run_dir, log))
            if w > 1 and not args.no_weak_scaling:
                ours.append(run_ours(m, w, args, run_dir, log, weak=True))
            if w > 1 and not args.no_grad_sync:
                ours.append(run_ours(m, w, args, run_dir, log, grad_sync="allreduce"))
            with open(os.path.join(work, "results.json"), "w") as f:
                json.dump({"peers": peers, "ours": ours, "ray_init_s": ray_init_s, "data_s": data_s}, f, indent=1)
        if not args.skip_in_process:
            local[m] = run_in_process(m, args, run_dir, log)
    sequence = None
    if not args.skip_sequence:
        from sequence_bench import MODELS as SEQ_MODELS, measure

        sequence = measure(SEQ_MODELS, steps=5 if args.quick else 30, epochs=2 if args.quick else 3)
    import ray

    ray.shutdown()
    sync = gradient_sync_bench(params, work)
    log("[ours] gradient averaging, 2 processes: " + "; ".join(
        f"{m} all-reduce {r['all_reduce_us']:.0f} us, exchange {r['exchange_us']:.0f} us" for m, r in sync.items()))
    info["load_end"] = list(os.getloadavg())
    info["total_s"] = time.perf_counter() - t_all
    write_report(args.out, args, command, info, peers, ours, local, ray_init_s, data_s, params, sync, sequence)
    print(open(args.out).read())
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
