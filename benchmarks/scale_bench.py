"""The whole pipeline at scale on the seeded synthetic log: per stage, wall time and peak memory per process; -> benchmarks/scale.md.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/scale_bench.py                  # 10M and 50M, ~40 min on 2 cores
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/scale_bench.py --sizes 10 --submit   # plus the 2-node `ray job submit`
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/scale_bench.py --quick --out /tmp/scale.md   # 1M, a smoke run

Each size is a log from `write_sharded` (power-law item popularity within taste groups, users of 5 +
geometric interactions, mean 50): 10M = 200k users x 1M items, 50M = 1M users x 1M items. For each,
`ray-recall pipeline` runs in a fresh process (a local Ray started in-process, 3 logical CPUs on this
2-core machine) twice: DSSM (per-prefix, list-wise sampled softmax) and SASRec (all positions,
sampled softmax with logQ), each with 2 training workers for `--steps` optimizer steps (two epochs of half as many; throughput from the second), then embedding
every item and user, an IVF index (its recall of exact search reported), and exact evaluation of a
seeded sample of test users. The SASRec run reuses the DSSM run's data/ (copied), as any second model
would.

Memory is each process's own peak RSS (the kernel's VmHWM, sampled every 0.5 s: benchmarks/proctree.py),
grouped by what the process was: the driver, each training worker, each embedding / evaluation actor,
Ray Data's tasks. Item-side state a worker holds on purpose (the model's item table and its Adam
moments, the sampler's tables) is reported apart, computed from its sizes. Wall time per stage comes
from the run's manifest (the stage's own seconds).

The endpoint at 1M items: benchmarks/serve_bench.py against the 10M SASRec run (history and user
queries, beside the no-op app, concurrency 1). Throughput per core is compared with the same models on
MovieLens-100K, same settings, in the same run.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from proctree import ProcessPeaks
from report import write_report

GIB = 1024 ** 3
PY = sys.executable
ROLES = {"train worker": "RayTrainWorker", "embed actor": "MapBatches(Embedder", "evaluate actor": "MapBatches(Evaluator",
         "Ray Data task": "ray::Read"}
SIZES = {1: (20_000, 200_000), 10: (200_000, 1_000_000), 50: (1_000_000, 1_000_000)}  # M rows -> users, items
TARGET_WORKER_GIB = 1.5
STAGES = ("preprocess", "train", "embed", "index", "evaluate")
TARGET_WALL_S = 20 * 60


def generate(work: str, size: int) -> dict[str, str]:
    from ray_recall.config import SyntheticConfig
    from ray_recall.stages.preprocess.synthetic import write_sharded

    users, items = SIZES[size]
    out = os.path.join(work, f"log_{size}M")
    if not os.path.exists(os.path.join(out, "items.parquet")):
        write_sharded(out, SyntheticConfig(num_users=users, num_items=items, num_groups=50, mean_length=50.0,
                                           zipf_exponent=1.0, seed=size), users_per_file=50_000)
    return {"interactions": os.path.join(out, "interactions"), "users": os.path.join(out, "users.parquet"),
            "items": os.path.join(out, "items.parquet")}


def config(model: str, paths: dict | None, run_dir: str, steps: int, eval_users: int) -> dict:
    """The shipped MovieLens config of `model`, on the synthetic log (or MovieLens itself when paths is None)."""
    from ray_recall.config import PipelineConfig

    cfg = PipelineConfig.from_yaml(os.path.join(ROOT, "configs", f"ml100k_{model}.yaml"))
    # Two epochs of steps / 2: the second one's throughput is steady (the first pays the ingest's start).
    over = {"run_dir": run_dir, "train.num_workers": 2, "train.cpus_per_worker": 1.0, "train.epochs": 2,
            "train.max_steps": max(1, steps // 2), "train.early_stopping_patience": 0, "train.num_threads": 1,
            "eval.max_users": eval_users, "compute.embed_actors": 2, "compute.cpus_per_actor": 0.5}
    if paths is not None:
        over.update({"data.source": "table", "data.path": paths["interactions"], "data.user_table": paths["users"],
                     "data.item_table": paths["items"], "data.user_feature_cols": ["taste"],
                     "data.item_feature_cols": ["category"], "data.title_col": "title",
                     "index.factory": "IVF1024,Flat", "index.search_params": {"nprobe": 32}})
        if model == "dssm":
            over["model.params"] = {**cfg.model.params, "user_features": ["taste"], "item_features": ["category"]}
    return cfg.replace(**over).to_dict()


def run_pipeline(cfg: dict, work: str, name: str, env: dict | None = None, submit_head=None) -> dict:
    """`ray-recall pipeline` in a fresh process (or as one submitted job), measured; returns times and peaks."""
    path = os.path.join(work, f"{name}.yaml")
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    log_path = os.path.join(work, f"{name}.log")
    if submit_head is not None:
        t0 = time.perf_counter()
        sub_id, out = submit_head.submit("jobs/pipeline.py", ["--config", path, "--samples", "0"], wait=True)
        wall = time.perf_counter() - t0
        with open(log_path, "w") as f:
            f.write(out.stdout + out.stderr)
        peaks = None
        rc = out.returncode
    else:
        cmd = [PY, "-m", "ray_recall.cli", "pipeline", "--config", path, "--samples", "0", "--num-cpus", "3"]
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or os.environ.copy(), cwd=ROOT)
            with ProcessPeaks(proc.pid) as peaks:
                rc = proc.wait()
        wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{name}: exited {rc}; see {log_path}:\n" + open(log_path).read()[-3000:])
    manifest = json.load(open(os.path.join(cfg["run_dir"], "manifest.json")))
    training = json.load(open(os.path.join(cfg["run_dir"], "model", "training.json")))
    metrics = json.load(open(os.path.join(cfg["run_dir"], "metrics.json")))
    index = json.load(open(os.path.join(cfg["run_dir"], "index", "meta.json")))
    ranks, driver_stages = {}, {}
    if peaks:
        for stage, v in manifest["stages"].items():  # the driver's peak while each stage ran (1 s resolution)
            end = time.mktime(time.strptime(v["finished_at"], "%Y-%m-%dT%H:%M:%S")) + 1
            driver_stages[stage] = peaks.root_peak_between(end - v["seconds"] - 2, end)
        for name in os.listdir(os.path.join(cfg["run_dir"], "train_workers")):
            info = json.load(open(os.path.join(cfg["run_dir"], "train_workers", name)))
            if info["pid"] in peaks.peak:
                ranks[info["rank"]] = (peaks.peak[info["pid"]], peaks.private[info["pid"]])
    return {"wall": wall, "stages": {s: v["seconds"] for s, v in manifest["stages"].items()},
            "peaks": peaks.by_role(ROLES) if peaks else None,
            "private": peaks.by_role(ROLES, private=True) if peaks else None, "ranks": ranks,
            "driver_stages": driver_stages,
            "training": training, "metrics": metrics, "index": index, "log": log_path,
            "model_state": model_state_bytes(cfg["run_dir"], json.load(open(os.path.join(cfg["run_dir"], "data",
                                                                                      "meta.json")))["num_items"])}


def copy_data(src_run: str, dst_run: str) -> None:
    shutil.rmtree(dst_run, ignore_errors=True)
    os.makedirs(dst_run)
    shutil.copytree(os.path.join(src_run, "data"), os.path.join(dst_run, "data"))
    manifest = json.load(open(os.path.join(src_run, "manifest.json")))
    manifest["stages"] = {"preprocess": manifest["stages"]["preprocess"]}
    json.dump(manifest, open(os.path.join(dst_run, "manifest.json"), "w"))


def model_state_bytes(run_dir: str, num_items: int) -> int:
    """What a training worker holds of the model on purpose: its parameters, their gradients and Adam's two moments
    (about 3x the saved weights beside the weights themselves, which the worker's copy of model.pt measures), and the
    sampler's tables (probabilities, cdf and log-probabilities: 3 float64 per item). At a million items the item
    table dominates both models; DSSM's user-id table grows with the users too."""
    weights = os.path.getsize(os.path.join(run_dir, "model", "model.pt"))
    return 4 * weights + (num_items + 1) * 3 * 8


def throughput(r: dict) -> float:
    h = r["training"]["history"][-1]
    return h["samples"] / max(h["epoch_seconds"], 1e-9) / 2  # per core: 2 workers x 1 thread


def serve_latency(run_dir: str, work: str, quick: bool) -> str:
    out = os.path.join(work, "serve.md")
    cmd = [PY, os.path.join(HERE, "serve_bench.py"), "--run-dir", run_dir, "--concurrency", "1", "--duration",
           "5" if quick else "15", "--out", out]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return open(out).read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 50], choices=sorted(SIZES))
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps per training run")
    ap.add_argument("--eval-users", type=int, default=10_000)
    ap.add_argument("--submit", action="store_true", help="also run the first size as one `ray job submit` on 2 nodes")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--out", default="benchmarks/scale.md")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from --work-dir's results_all.json (a finished run's), running nothing")
    args = ap.parse_args()
    if args.report_only:
        saved = json.load(open(os.path.join(args.work_dir, "results_all.json")))
        results = {int(k): v for k, v in saved["results"].items()}
        for r in [*results.values(), saved["ml"]]:
            for v in r.values():
                if isinstance(v, dict) and "ranks" in v:
                    v["ranks"] = {int(k): x for k, x in v["ranks"].items()}
        args.sizes, args.steps, args.eval_users = saved["sizes"], saved["steps"], saved["eval_users"]
        write(args, saved["command"], saved["started"], args.work_dir, results, saved["ml"], saved["submitted"],
              saved["serve"])
        return
    if args.quick:
        args.sizes, args.steps, args.eval_users = [1], 40, 2000
    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="ray_recall_scale_"))
    os.makedirs(work, exist_ok=True)
    argv, skip = [], False
    for a in sys.argv[1:]:  # the command as run, minus where the run directories went
        if skip or a == "--work-dir" or a.startswith("--work-dir="):
            skip = a == "--work-dir"
            continue
        argv.append(a)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/scale_bench.py", *argv])
    started = time.strftime("%Y-%m-%d %H:%M")
    results: dict = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        paths = generate(work, size)
        gen_s = time.perf_counter() - t0
        print(f"[scale] {size}M log in {gen_s:.0f}s", flush=True)
        dssm_run, sasrec_run = os.path.join(work, f"dssm_{size}M"), os.path.join(work, f"sasrec_{size}M")
        shutil.rmtree(dssm_run, ignore_errors=True)
        results[size] = {"generate_s": gen_s}
        for model, run in (("dssm", dssm_run), ("sasrec", sasrec_run)):
            if model == "sasrec":
                copy_data(dssm_run, sasrec_run)
            r = run_pipeline(config(model, paths, run, args.steps, args.eval_users), work, f"{model}_{size}M")
            results[size][model] = r
            print(f"[scale] {size}M {model}: {r['wall']:.0f}s; stages {r['stages']}; peak RSS (GiB) "
                  + json.dumps({k: [round(x / GIB, 2) for x in v] for k, v in r["peaks"].items()}) + "; private "
                  + json.dumps({k: [round(x / GIB, 2) for x in v] for k, v in r["private"].items()}), flush=True)
        json.dump(results, open(os.path.join(work, "results.json"), "w"), indent=1, default=str)
    # The same models on MovieLens-100K, same settings: throughput per core to compare with.
    ml = {}
    for model in ("dssm", "sasrec"):
        run = os.path.join(work, f"{model}_ml100k")
        shutil.rmtree(run, ignore_errors=True)
        ml[model] = run_pipeline(config(model, None, run, min(args.steps, 150), 943), work, f"{model}_ml100k")
        print(f"[scale] ml100k {model}: {throughput(ml[model]):,.0f} targets/s per core", flush=True)
    submitted = run_submitted(args, work) if args.submit else None
    serve = None if args.skip_serve else serve_latency(os.path.join(work, f"sasrec_{args.sizes[0]}M"), work, args.quick)
    json.dump({"results": results, "ml": ml, "submitted": submitted, "serve": serve, "command": command,
               "started": started, "sizes": args.sizes, "steps": args.steps, "eval_users": args.eval_users},
              open(os.path.join(work, "results_all.json"), "w"), indent=1, default=str)
    write(args, command, started, work, results, ml, submitted, serve)


def run_submitted(args, work: str) -> dict:
    """The first size's SASRec pipeline as one `ray job submit` on a local 2-node cluster."""
    from tests.ray_head import add_node, start_head, stop_head

    size = args.sizes[0]
    paths = generate(work, size)
    run = os.path.join(work, f"sasrec_{size}M_submitted")
    shutil.rmtree(run, ignore_errors=True)
    head = start_head(num_cpus=2, multinode=True)
    node = None
    try:
        node = add_node(head, num_cpus=2)
        cfg = config("sasrec", paths, run, args.steps, args.eval_users)
        cfg["train"]["placement_strategy"] = "STRICT_SPREAD"
        return run_pipeline(cfg, work, f"sasrec_{size}M_submitted", submit_head=head)
    finally:
        if node is not None:
            node.terminate()
        stop_head(head)


def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def write(args, command: str, started: str, work: str, results: dict, ml: dict, submitted, serve) -> None:
    lines = ["# The pipeline at scale (synthetic log, 2 training workers)", "",
             f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
             f"recorded {started}. Each size: 2 pipelines (DSSM, then SASRec on a copy of its data), each "
             f"`ray-recall pipeline` in a fresh process; training {args.steps} steps on 2 workers (1 CPU, 1 thread "
             f"each); evaluation on a seeded sample of {args.eval_users:,} test users.", ""]
    lines += ["## Wall time per stage (seconds)", "",
              "| log | model | preprocess | train | embed | index | evaluate | whole command |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for size, r in results.items():
        for model in ("dssm", "sasrec"):
            s = r[model]["stages"]
            lines.append(f"| {size}M | {model} | {s.get('preprocess', 0) if model == 'dssm' else '(copied)'} | "
                         f"{s['train']:.0f} | {s['embed']:.0f} | {s['index']:.0f} | {s['evaluate']:.0f} | "
                         f"{r[model]['wall']:.0f} |")
    for kind, title in (("peaks", "peak RSS (VmHWM): every page mapped, the object store's shared pages included"),
                        ("private", "peak private memory (RssAnon, sampled every 0.25 s): what the process itself holds")):
        lines += ["", f"## Memory per process (GiB), {title}", "",
                  "| log | model | driver | training worker rank 0 (validates) | rank 1 | of which model state, each "
                  "| embed actors | evaluate actors | Ray Data tasks (largest) |", "|---|---|---:|---:|---:|---:|---|---|---:|"]
        for size, r in results.items():
            for model in ("dssm", "sasrec"):
                p, ranks = r[model][kind], r[model]["ranks"]
                col = 0 if kind == "peaks" else 1
                lines.append(f"| {size}M | {model} | {_gib(p['driver'][0])} | "
                             + " | ".join(_gib(ranks[k][col]) if k in ranks else "-" for k in (0, 1)) + " | "
                             f"{_gib(r[model]['model_state'])} | "
                             + ", ".join(_gib(x) for x in p.get("embed actor", [])) + " | "
                             + ", ".join(_gib(x) for x in p.get("evaluate actor", [])) + " | "
                             + (_gib(max(p["Ray Data task"])) if p.get("Ray Data task") else "-") + " |")
    lines += ["", "## The driver's peak private memory per stage (GiB)", "",
              "| log | model | " + " | ".join(STAGES) + " |", "|---|---|" + "---:|" * len(STAGES)]
    for size, r in results.items():
        for model in ("dssm", "sasrec"):
            d = r[model].get("driver_stages", {})
            lines.append(f"| {size}M | {model} | " + " | ".join(_gib(d[s]) if d.get(s) else "-" for s in STAGES) + " |")
    lines += ["", "## Targets", ""]
    if 10 in results:
        for model in ("dssm", "sasrec"):
            side = results[10][model]["model_state"]
            for kind, col in (("peak RSS", 0), ("peak private memory", 1)):
                w = max(v[col] for v in results[10][model]["ranks"].values()) - side
                lines.append(f"- {model}: training worker {kind} less the model state {_gib(w)} GiB at 10M (target <= "
                             f"{TARGET_WORKER_GIB} GiB): {'met' if w <= TARGET_WORKER_GIB * GIB else '**missed**'}.")
                if 50 in results:
                    w50 = max(v[col] for v in results[50][model]["ranks"].values()) - results[50][model]["model_state"]
                    lines.append(f"- {model}: at 50M {_gib(w50)} GiB, {w50 / max(w, 1):.2f}x the 10M figure (target "
                                 f"<= 1.10x): {'met' if w50 <= 1.1 * w else '**missed**'}.")
            for role in ("embed actor", "evaluate actor"):
                a10 = max(results[10][model]["private"].get(role, [0]))
                line = f"- {model}: {role} peak private memory {_gib(a10)} GiB at 10M"
                if 50 in results:
                    a50 = max(results[50][model]["private"].get(role, [0]))
                    line += f", {_gib(a50)} at 50M ({a50 / max(a10, 1):.2f}x)"
                lines.append(line + ".")
        wall = sum(results[10][m]["wall"] for m in ("dssm", "sasrec"))
        lines.append(f"- The 10M pipelines (DSSM and SASRec, 2 workers each) took {wall / 60:.1f} min in all "
                     f"(target: within 20 min): {'met' if wall <= TARGET_WALL_S else '**missed**'}.")
        for model in ("dssm", "sasrec"):
            big, small = throughput(results[10][model]), throughput(ml[model])
            lines.append(f"- {model}: training {big:,.0f} targets/s per core at 10M, {small:,.0f} on MovieLens-100K "
                         f"({big / small:.2f}x; target >= 0.8x): {'met' if big >= 0.8 * small else '**missed**'}.")
    for size, r in results.items():
        for model in ("dssm", "sasrec"):
            m = r[model]["metrics"]
            se = m["standard_errors"][model]["recall@10"]
            lines.append(f"- {size}M {model}: Recall@10 {m['metrics'][model]['recall@10']:.4f} +- {se:.4f} "
                         f"(most-popular {m['metrics']['most_popular']['recall@10']:.4f}) on {m['num_users']:,} of "
                         f"{m['num_users_total']:,} users; index {r[model]['index']['factory']} "
                         f"{r[model]['index'].get('search_params')}: recall of exact top-10 "
                         f"{r[model]['index'].get('ann_recall@10', float('nan')):.4f}.")
    if submitted is not None:
        s = submitted
        lines += ["", f"## As one `ray job submit` on a 2-node local cluster ({args.sizes[0]}M, SASRec)", "",
                  f"Whole job {s['wall']:.0f} s; stages {json.dumps({k: round(v) for k, v in s['stages'].items()})}; "
                  f"Recall@10 {s['metrics']['metrics']['sasrec']['recall@10']:.4f} "
                  f"(in process: {results[args.sizes[0]]['sasrec']['metrics']['metrics']['sasrec']['recall@10']:.4f})."]
    if serve is not None:
        lines += ["", f"## The endpoint at {SIZES[args.sizes[0]][1]:,} items (serve_bench.py, concurrency 1)", ""]
        lines += [line for line in serve.splitlines() if line.startswith("|") or line.startswith("- ")]
    write_report(args.out, lines, smoke="a 1M log and 40 steps" if args.quick else None)


if __name__ == "__main__":
    main()
