"""The data stage at scale: 1M to 50M synthetic interactions, beside torch-rechub at 1M and 5M, to benchmarks/preprocess.md.

    bash benchmarks/peer_env.sh                                   # once: .venv-peer with torch-rechub 0.9.0
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/preprocess_bench.py               # 1M, 2M, 5M, 10M, 50M (~13 min)
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/preprocess_bench.py --sizes 1 --peer-sizes 1 --out /tmp/pre.md

The logs come from the project's seeded generator (`ray_recall.stages.preprocess.synthetic.write_sharded`): Zipf
item popularity inside latent taste groups, per-user lengths 5 + geometric with mean about 50, one
parquet file per 50,000 users, one item per 100 interactions. Each size runs the real preprocess
stage as a user would, `ray-recall preprocess` in a fresh process (local Ray started in-process,
so every Ray process is a descendant of it): read, validate, vocabularies, per-user sequences
(hash-partitioned by user), leave-last-out splits, popularity, all written under the run directory.
With the default settings a log of at most 2M interactions is prepared in the driver process
(`data.in_process_max_rows`: the same functions, the same files), a larger one on Ray Data; the
1M log is also run on Ray Data (`--ray-data-sizes`) to show that path's cost beside it, and the
2M log (2.05M rows, just above the bound) in process (`--in-process-sizes`) to show the driver's
memory there.

Measured from outside (benchmarks/proctree.py): wall seconds of the whole command (Ray's start and
stop included) and peak memory as the summed PSS of the process tree, object store included. The
stage's own seconds (data/meta.json, Ray's start excluded) are reported beside. The peer,
torch-rechub 0.9.0's `generate_seq_feature_match` + `gen_model_input` (benchmarks/peer_preprocess.py),
runs on the same 1M and 5M logs in the same benchmark run, measured the same way (not larger: it holds
every training row's history as a Python list, 2.9 GiB at 1M, so 10M would not fit in this machine's
24 GiB).

Negatives are not part of the data stage: training draws them per batch, with the history windows,
in each worker. To show that part at each size too, one process does what a training worker does
before and during one epoch over the whole training split (`--assemble RUN_DIR`, measured the same
way): load the sequences and popularity, build the sampler with every user's train-part positives,
then assemble every batch of 4096 samples (50-item windows, 3 popularity^0.75 negatives, never a
user's own item), without a model.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
from proctree import run_measured  # noqa: E402

MEAN_LENGTH = 50
USERS_PER_FILE = 50_000
TARGET_SPEEDUP = 20.0  # ours vs the peer at 1M
TARGET_10M_GIB = 4.0
TARGET_SCALING = 12.0  # t(10M) / t(1M)
PEER_PY = os.path.join(ROOT, ".venv-peer", "bin", "python")
GIB = 1024 ** 3


def log_dir(work: str, millions: float) -> str:
    return os.path.join(work, f"log_{millions:g}m")


def generate(work: str, millions: float) -> dict:
    """Write (once) a log of about `millions` million interactions; returns its row count and bytes on disk."""
    from ray_recall.config import SyntheticConfig
    from ray_recall.stages.preprocess.synthetic import write_sharded

    out = log_dir(work, millions)
    stamp = os.path.join(out, "done.json")
    if not os.path.exists(stamp):
        shutil.rmtree(out, ignore_errors=True)
        n = int(millions * 1_000_000)
        # Lengths average about MEAN_LENGTH - 3 after repeats are dropped (more with a larger catalogue).
        cfg = SyntheticConfig(num_users=round(n / (MEAN_LENGTH - 3)), num_items=max(10_000, n // 100),
                              mean_length=MEAN_LENGTH, seed=0)
        t0 = time.perf_counter()
        write_sharded(out, cfg, users_per_file=USERS_PER_FILE)
        import pyarrow.parquet as pq

        files = sorted(glob.glob(os.path.join(out, "interactions", "*.parquet")))
        info = {"rows": sum(pq.ParquetFile(f).metadata.num_rows for f in files), "files": len(files),
                "bytes": sum(os.path.getsize(f) for f in files), "users": cfg.num_users, "items": cfg.num_items,
                "seconds": time.perf_counter() - t0}
        with open(stamp, "w") as f:
            json.dump(info, f)
    with open(stamp) as f:
        return json.load(f)


BATCH = 4096
NEGATIVES = 3


def assemble_epoch(run_dir: str, out: str) -> None:
    """One training worker's data work for one epoch, without a model (run in its own process): the per-prefix
    samples of every user's sequence row, their windows and negatives, as the training stream builds them."""
    import pyarrow.parquet as pq

    from ray_recall.negatives import NegativeSampler
    from ray_recall.rundir import RunDir
    from ray_recall.stages.train.batches import SequenceBatchBuilder, rows_per_chunk

    run = RunDir(run_dir)
    t0 = time.perf_counter()
    meta = run.read_meta()
    sampler = NegativeSampler(run.read_item_counts(), "word2vec")  # item-side only: rows bring their positives
    setup = time.perf_counter() - t0
    build = SequenceBatchBuilder(sampler, meta["max_len"], NEGATIVES, seed=0, epoch=0, targets="per_prefix")
    rows_per = rows_per_chunk(meta["samples"]["train"] / max(meta["num_sequence_users"], 1))
    samples = 0
    t0 = time.perf_counter()
    for name in run.files("data", "sequences", suffix=".parquet"):  # streamed a file at a time, as Ray Data reads them
        rows = pq.read_table(run.path("data", "sequences", name), filesystem=run.fs)
        for lo in range(0, rows.num_rows, rows_per):
            samples += len(build(rows.slice(lo, rows_per))["user_id"])
    with open(out, "w") as f:
        json.dump({"setup_seconds": setup, "epoch_seconds": time.perf_counter() - t0, "samples": samples}, f)


def measured(what: str, cmd: list[str], log_path: str, env: dict | None = None, out_json: str | None = None) -> dict:
    """run_measured(cmd), stopping the benchmark if it fails; with out_json, the figures the command wrote there too."""
    res = run_measured(cmd, env=env, log_path=log_path)
    if res["rc"] != 0:
        raise SystemExit(f"{what} failed (rc {res['rc']}); see {log_path}")
    if out_json:
        with open(out_json) as f:
            res.update(json.load(f))
    return res


def run_assemble(work: str, millions: float, run_dir: str) -> dict:
    out = os.path.join(work, f"assemble_{millions:g}m.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--assemble", run_dir, out]
    return measured(f"batch assembly {millions:g}M", cmd, os.path.join(work, f"assemble_{millions:g}m.log"),
                    env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"), out_json=out)


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


FORCE = {"ray_data": "0", "in_process": str(10 ** 10)}  # data.in_process_max_rows that forces each path


def run_ours(work: str, millions: float, force: str | None = None) -> dict:
    """`ray-recall preprocess` as configured by default, or on one path (FORCE) whatever the log's size."""
    tag = f"{millions:g}m" + (f"_{force}" if force else "")
    run_dir = os.path.join(work, f"run_{tag}")
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "ray_recall.cli", "preprocess", "--run-dir", run_dir,
           "--set", "data.source=table", "--set", f"data.path={log_dir(work, millions)}/interactions"]
    if force:
        cmd += ["--set", f"data.in_process_max_rows={FORCE[force]}"]
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=ROOT)
    print(f"ours {millions:g}M: {shlex.join(cmd)}", flush=True)
    res = measured(f"ours {millions:g}M", cmd, os.path.join(work, f"ours_{tag}.log"), env=env)
    with open(os.path.join(run_dir, "data", "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(work, f"ours_{tag}.log")) as f:
        res["in_process"] = "in this process" in f.read()
    res.update(stage_seconds=meta["seconds"], interactions=meta["num_interactions"], users=meta["num_users"],
               items=meta["num_items"], train_samples=meta["samples"]["train"],
               bytes={part: du(os.path.join(run_dir, "data", part)) for part in ("sequences", "train", "val", "test")})
    if not force:
        res["assemble"] = run_assemble(work, millions, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return res


def run_peer(work: str, millions: float) -> dict:
    out = os.path.join(work, f"peer_{millions:g}m.json")
    cmd = [PEER_PY, os.path.join(HERE, "peer_preprocess.py"), "--log", log_dir(work, millions), "--out", out]
    print(f"peer {millions:g}M: {shlex.join(cmd)}", flush=True)
    return measured(f"peer {millions:g}M", cmd, os.path.join(work, f"peer_{millions:g}m.log"), out_json=out)


def gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def report(args, logs: dict, ours: dict, forced: dict, peer: dict | None) -> str:
    ours_ray_data = forced.get("ray_data", {})
    sizes = sorted(ours)
    lines = [
        "# The data stage at scale: preprocess on 1M-50M interactions",
        "",
        "Reproduce (after `bash benchmarks/peer_env.sh` once):",
        "",
        "    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/preprocess_bench.py"
        + (f" --sizes {args.sizes}" if args.sizes != "1,2,5,10,50" else "")
        + (f" --peer-sizes '{args.peer_sizes}'" if args.peer_sizes != "1,5" else "")
        + (f" --ray-data-sizes '{args.ray_data_sizes}'" if args.ray_data_sizes != "1" else "")
        + (f" --in-process-sizes '{args.in_process_sizes}'" if args.in_process_sizes != "2" else ""),
        "",
        f"Machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB, "
        f"Python {platform.python_version()}; run {time.strftime('%Y-%m-%d %H:%M')}. "
        "How it is measured: the docstring of benchmarks/preprocess_bench.py.",
        "",
        "## ray_recall `ray-recall preprocess` (a fresh process each; local Ray started in-process)",
        "",
        "Default settings: a log of at most 2M interactions (`data.in_process_max_rows`) is prepared in the driver "
        "process by the same functions, writing the same files; a larger one on Ray Data. Rows marked *(forced)* "
        "run a log on the other path (`--set data.in_process_max_rows=0`, or a bound above the log): Ray Data's cost "
        "on a small log, and the driver's memory in process at the bound.",
        "",
        "| interactions | path | users | items | input parquet | wall (whole command) | stage (Ray start excluded) "
        "| rows/s (stage) | peak memory, process tree | peak, driver alone | output: sequences + splits |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sizes:
        for r, how in ((ours[s], None), (ours_ray_data.get(s), "Ray Data"), (forced.get("in_process", {}).get(s), "in process")):
            if r is None:
                continue
            path = f"{how} (forced)" if how else ("in process" if r["in_process"] else "Ray Data")
            out_bytes = sum(r["bytes"].values())
            lines.append(f"| {r['interactions']:,} | {path} | {r['users']:,} | {r['items']:,} | {logs[s]['bytes'] / 2**20:.0f} MiB "
                         f"| {r['wall']:.1f} s | {r['stage_seconds']:.1f} s | {r['interactions'] / r['stage_seconds']:,.0f} "
                         f"| {gib(r['peak_tree'])} | {gib(r['peak_root'])} "
                         f"| {r['bytes']['sequences'] / 2**20:.0f} + {(out_bytes - r['bytes']['sequences']) / 2**20:.0f} MiB |")
    lines += [
        "",
        "## Negatives and history windows at training time (one worker's share: here the whole split)",
        "",
        f"Batches of {BATCH} samples with 50-item windows and {NEGATIVES} popularity^0.75 negatives (never the user's "
        "own item), built as a training worker builds them, in one process with one thread and no model.",
        "",
        "| interactions | training samples | set-up (sequences, popularity, positives) | one epoch of batches "
        "| samples/s | peak memory |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sizes:
        a = ours[s]["assemble"]
        lines.append(f"| {ours[s]['interactions']:,} | {a['samples']:,} | {a['setup_seconds']:.1f} s | {a['epoch_seconds']:.1f} s "
                     f"| {a['samples'] / a['epoch_seconds']:,.0f} | {gib(a['peak_tree'])} |")
    lines += [""]
    if peer:
        lines += [
            "## Beside torch-rechub 0.9.0 on the same logs, same run",
            "",
            "Peer: `generate_seq_feature_match` + `gen_model_input` (training rows with histories materialized); "
            "ours: `ray-recall preprocess` (user, position, target; history cut at batch time).",
            "",
            "| interactions | | wall (whole command) | preparation alone | peak memory, process tree | training rows out "
            "| speed-up, preparation (whole command) |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for s in sorted(peer):
            p = peer[s]
            lines.append(f"| {p['interactions']:,} | torch-rechub | {p['wall']:.1f} s | {p['seconds']:.1f} s "
                         f"| {gib(p['peak_tree'])} | {p['train_rows']:,} | |")
            for r, name in ((ours[s], "ray_recall"), (ours_ray_data.get(s), "ray_recall, Ray Data (forced)")):
                if r is not None:
                    if name == "ray_recall":
                        name += ", in process" if r["in_process"] else ", Ray Data"
                    lines.append(f"| | {name} | {r['wall']:.1f} s | {r['stage_seconds']:.1f} s | {gib(r['peak_tree'])} "
                                 f"| {r['train_samples']:,} | **{p['seconds'] / r['stage_seconds']:.1f}x** "
                                 f"({p['wall'] / r['wall']:.1f}x) |")
        lines += ["", "Peer steps: " + "; ".join(
            f"{s:g}M " + ", ".join(f"{k} {v:.1f} s" for k, v in peer[s]["steps"].items()) for s in sorted(peer)) + ".", ""]
    lines += ["## Targets", ""]
    if 1 in peer:
        speedup = peer[1]["seconds"] / ours[1]["stage_seconds"]
        lines.append(f"- >= {TARGET_SPEEDUP:g}x the peer's speed at 1M: {speedup:.1f}x with the default settings "
                     f"(**{'met' if speedup >= TARGET_SPEEDUP else 'missed'}**)"
                     + (f"; {peer[1]['seconds'] / ours_ray_data[1]['stage_seconds']:.1f}x with Ray Data forced"
                        if 1 in ours_ray_data else "") + ".")
    if 10 in ours:
        r10 = ours[10]
        lines.append(f"- 10M within {TARGET_10M_GIB:g} GiB peak: {gib(r10['peak_tree'])} "
                     f"(**{'met' if r10['peak_tree'] <= TARGET_10M_GIB * GIB else 'missed'}**).")
        # Linearity is a property of one path: compare 10M with 1M on the path 10M takes.
        same = ours[1] if 1 in ours and ours[1]["in_process"] == r10["in_process"] else ours_ray_data.get(1)
        if same is not None and not r10["in_process"]:
            ratio = r10["stage_seconds"] / same["stage_seconds"]
            lines.append(f"- time(10M) <= {TARGET_SCALING:g} x time(1M), both on Ray Data (the path 10M takes): stage "
                         f"{ratio:.1f}x, whole command {r10['wall'] / same['wall']:.1f}x "
                         f"(**{'met' if ratio <= TARGET_SCALING else 'missed'}**).")
        if 1 in ours and ours[1] is not same:
            lines.append(f"  Against 1M with the default settings (in process, without Ray Data's fixed cost): stage "
                         f"{r10['stage_seconds'] / ours[1]['stage_seconds']:.1f}x, whole command "
                         f"{r10['wall'] / ours[1]['wall']:.1f}x: the switch of path, not a loss of linearity.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--assemble":
        return assemble_epoch(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,2,5,10,50", help="millions of interactions, comma-separated")
    ap.add_argument("--peer-sizes", default="1,5", help="sizes (among --sizes) the peer runs too; '' for none")
    ap.add_argument("--ray-data-sizes", default="1", help="sizes (among --sizes) also run on Ray Data whatever their size")
    ap.add_argument("--in-process-sizes", default="2", help="sizes (among --sizes) also run in process whatever their size")
    ap.add_argument("--work", default="/tmp/ray_recall_preprocess_bench", help="logs and run directories (large)")
    ap.add_argument("--out", default=os.path.join(HERE, "preprocess.md"))
    args = ap.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    os.makedirs(args.work, exist_ok=True)
    logs = {}
    for s in sizes:
        logs[s] = generate(args.work, s)
        print(f"log {s:g}M: {logs[s]['rows']:,} rows in {logs[s]['files']} files", flush=True)
    peer = {}
    peer_sizes = [float(s) for s in args.peer_sizes.split(",") if s]
    if set(peer_sizes) - set(sizes):
        raise SystemExit(f"--peer-sizes {args.peer_sizes} must be among --sizes {args.sizes}")
    if peer_sizes and not os.path.exists(PEER_PY):
        raise SystemExit("no .venv-peer: run `bash benchmarks/peer_env.sh` first (or pass --peer-sizes '')")
    for s in peer_sizes:
        peer[s] = run_peer(args.work, s)
        print(f"peer {s:g}M: {peer[s]['wall']:.1f} s, peak {gib(peer[s]['peak_tree'])}", flush=True)
    ours = {}
    for s in sizes:
        ours[s] = run_ours(args.work, s)
        print(f"ours {s:g}M: {ours[s]['wall']:.1f} s wall, stage {ours[s]['stage_seconds']:.1f} s, "
              f"peak {gib(ours[s]['peak_tree'])} (driver {gib(ours[s]['peak_root'])}); batches "
              f"{ours[s]['assemble']['epoch_seconds']:.1f} s an epoch, peak {gib(ours[s]['assemble']['peak_tree'])}",
              flush=True)
    forced = {"ray_data": {}, "in_process": {}}
    for force, sizes_arg in (("ray_data", args.ray_data_sizes), ("in_process", args.in_process_sizes)):
        for s in [float(s) for s in sizes_arg.split(",") if s]:
            r = forced[force][s] = run_ours(args.work, s, force)
            print(f"ours {s:g}M, {force} forced: {r['wall']:.1f} s wall, stage {r['stage_seconds']:.1f} s, "
                  f"peak {gib(r['peak_tree'])} (driver {gib(r['peak_root'])})", flush=True)
    text = report(args, logs, ours, forced, peer)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump({"logs": logs, "ours": ours, "forced": forced, "peer": peer}, f, indent=1)
    print(text)


if __name__ == "__main__":
    main()
