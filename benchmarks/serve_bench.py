"""Latency and throughput of the recall endpoint over real HTTP, beside its ceiling and its floor; -> benchmarks/serve.md.

    .venv/bin/python benchmarks/serve_bench.py                      # ~6 min on 2 idle cores (training ~1.5 min)
    .venv/bin/python benchmarks/serve_bench.py --quick --out /tmp/serve_smoke.md    # smoke run, ~2 min
    .venv/bin/python benchmarks/serve_bench.py --run-dir runs/ml100k_dssm          # an existing run, no training
    .venv/bin/python benchmarks/serve_bench.py --batch-wait-timeout-s 0 0.001 0.005  # sweep the batching wait

A small DSSM run is trained first (MovieLens-100K with configs/ml100k_dssm.yaml cut to one epoch;
`--quick`: a small synthetic log): the model's quality does not matter here, only that every stage
is real. Then one Serve instance on this machine hosts, side by side:

    /        the real app (`ray_recall.serve.app`), 1 replica, the app's batching defaults
    /noop    the ceiling: a deployment with the same FastAPI ingress (same route, request and response
             models, same replica CPUs and max_ongoing_requests) whose handler returns a constant
             10-item answer of the real app's size: everything but the recall itself

A closed-loop HTTP load generator (aiohttp on uvloop, keep-alive connections, in this process)
keeps `c` requests in flight for a fixed time per cell and records each request's latency; user-id
queries and history queries (each user's last 20 items, as sent by a client that does not know the
user) are measured separately. The cells are interleaved so that a change in machine load hits all
three alike: at concurrency 1 they take turns request by request (no-op, user, history, no-op, ...;
each cell's QPS is then its requests over the time spent on them), above it they take turns
`--rounds` times, each turn a share of `--duration`. The floor is measured in the same run: the
in-process `Recaller` (no HTTP, no Serve), one query at a time: back to back, and again with the
no-op's round trip of idle time before each query, as the replica gets them at concurrency 1 (the
caches are cold then: that floor, not the back-to-back one, is what the endpoint can approach).

Targets: p50 at concurrency 1 within 2 ms of the no-op's; QPS at concurrency 32 at least 80% of the
no-op's, with 0 errors.
"""

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import socket
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
from report import write_report

K = 10
HISTORY_LEN = 20
NOOP_ROUTE = "/noop"
TARGET_P50_MS = 2.0  # p50 at concurrency 1: at most this much above the no-op's
TARGET_QPS_RATIO = 0.8  # QPS at concurrency 32: at least this share of the no-op's


# ------------------------------------------------------------------------------------ the run


def _quick_config(run_dir: str):
    """A small synthetic run (a few seconds of training)."""
    from ray_recall.config import PipelineConfig

    return PipelineConfig.from_dict({
        "run_dir": run_dir,
        "data": {"source": "synthetic", "max_len": 20, "num_partitions": 2,
                 "synthetic": {"num_users": 500, "num_items": 400, "num_groups": 8, "mean_length": 20, "seed": 7}},
        "model": {"name": "dssm", "embedding_dim": 32, "params": {"feature_dim": 16, "hidden_units": [64]}},
        "train": {"mode": "listwise", "epochs": 1, "batch_size": 256, "num_negatives": 10, "lr": 0.005,
                  "cpus_per_worker": 1.0, "temperature": 0.1},
        "eval": {"ks": [10]},
    })


def train_run(args) -> tuple[str, float]:
    """-> (run directory, seconds spent training it; 0 when --run-dir names an existing run)."""
    from ray_recall.config import PipelineConfig
    from ray_recall.pipeline import run_pipeline

    if args.run_dir:
        return os.path.abspath(args.run_dir), 0.0
    run_dir = os.path.join(tempfile.mkdtemp(prefix="ray_recall_serve_bench_"), "run")
    if args.quick:
        cfg = _quick_config(run_dir)
    else:
        cfg = PipelineConfig.from_yaml(args.config).replace(run_dir=run_dir, **{"train.epochs": 1})
    t0 = time.perf_counter()
    run_pipeline(cfg, force=True, log=lambda msg: print(msg, flush=True))
    return run_dir, time.perf_counter() - t0


def workload(recaller, n: int, seed: int = 0) -> dict[str, list[bytes]]:
    """{"user": [request body], "history": [...]}: n users of the run in random order, as JSON bytes."""
    rng = np.random.default_rng(seed)
    users = [u.item() if hasattr(u, "item") else u for u in recaller.user_raw]
    users = [users[i] for i in rng.permutation(len(users))[:n]]
    user_bodies, history_bodies = [], []
    for u in users:
        user_bodies.append(json.dumps({"user_id": u, "k": K}).encode())
        history_bodies.append(json.dumps({"history": recaller.history(u)[-HISTORY_LEN:], "k": K}).encode())
    return {"user": user_bodies, "history": history_bodies}


# ------------------------------------------------------------------------------------ the ceiling


def noop_app(constant: dict, max_ongoing_requests: int):
    """A deployment with the real app's ingress (route, request and response models, replica CPUs) that
    answers every valid request with `constant`: the cost of HTTP, the proxy, routing and FastAPI alone."""
    from fastapi import FastAPI, Request
    from ray import serve

    from ray_recall.serve.app import DEFAULT_LIMITS, RecallDeployment, RecallResponse, parse_request

    # Annotations are evaluated here (this module does not postpone them), so FastAPI sees the real models.
    api = FastAPI()

    @serve.deployment(ray_actor_options=RecallDeployment.ray_actor_options, max_ongoing_requests=max_ongoing_requests)
    @serve.ingress(api)
    class NoopRecall:
        def __init__(self, answer: dict):
            self.answer = answer

        @api.post("/recall", response_model=RecallResponse)
        async def recall(self, request: Request) -> dict:
            req = await parse_request(request, DEFAULT_LIMITS)  # the real app's bounded parse
            return {**self.answer, "user_id": req.user_id}

    return NoopRecall.bind(constant)


# ------------------------------------------------------------------------------------ load generator


async def _load(targets: list[tuple[str, list[bytes]]], concurrency: int, warmup_s: float, duration_s: float) -> list[dict]:
    """Closed loop: `concurrency` clients, each sending its next request as soon as the last one is answered,
    to the targets [(url, request bodies)] in turn, a request each. Per target: {"latencies", "errors",
    "batch_sizes", "duration_s"}: the measured time, or with several targets the time spent on this one."""
    import aiohttp

    raws = [{"latencies": [], "errors": [], "batch_sizes": [], "duration_s": 0.0 if len(targets) > 1 else duration_s}
            for _ in targets]
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t_start = time.perf_counter()
        t_measure, t_end = t_start + warmup_s, t_start + warmup_s + duration_s

        async def client(offset: int):
            i = offset
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                (url, bodies), raw = targets[i % len(targets)], raws[i % len(targets)]
                body = bodies[(i // len(targets)) % len(bodies)]
                i += concurrency
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        payload = await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    ok, payload = False, repr(e).encode()
                t1 = time.perf_counter()
                if t0 < t_measure:
                    continue  # warm-up
                if len(targets) > 1:
                    raw["duration_s"] += t1 - t0
                if ok:
                    raw["latencies"].append(t1 - t0)
                    raw["batch_sizes"].append(json.loads(payload).get("batch_size", 1))
                else:
                    raw["errors"].append(payload[:200].decode(errors="replace"))

        await asyncio.gather(*(client(n) for n in range(concurrency)))
    return raws


def load(targets: list[tuple[str, list[bytes]]], concurrency: int, warmup_s: float, duration_s: float) -> list[dict]:
    """Each target's raw measurements (`_load`; `summarize` them)."""
    try:
        import uvloop

        return uvloop.run(_load(targets, concurrency, warmup_s, duration_s))
    except ImportError:
        return asyncio.run(_load(targets, concurrency, warmup_s, duration_s))


def summarize(raws: list[dict]) -> dict:
    """The rounds of one cell, pooled -> its summary row."""
    return _summary([x for r in raws for x in r["latencies"]], sum(r["duration_s"] for r in raws),
                    errors=[x for r in raws for x in r["errors"]], batch_sizes=[x for r in raws for x in r["batch_sizes"]])


def _summary(latencies: list[float], duration_s: float, errors=(), batch_sizes=None) -> dict:
    lat = np.asarray(latencies) * 1e3
    return {"requests": len(lat), "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "qps": len(lat) / duration_s,
            "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else None}


def in_process(recaller, bodies: list[bytes], duration_s: float, gap_s: float = 0.0) -> dict:
    """The floor: Recaller.answer on one query at a time, in this process (no HTTP, no Serve).

    gap_s: idle time before each query, as a replica sees at concurrency 1 (a query every round trip).
    Back to back, every query finds the caches warm from the one before; after a few milliseconds of
    other processes on the cores, it does not, and costs 2-3x the CPU time."""
    from ray_recall.serve.recaller import Query

    queries = [Query(**json.loads(b)) for b in bodies]
    for q in queries[:50]:
        recaller.answer(q)  # warm-up
    latencies, i = [], 0
    t_end = time.perf_counter() + duration_s
    t_start = time.perf_counter()
    while time.perf_counter() < t_end:
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        recaller.answer(queries[i % len(queries)])
        latencies.append(time.perf_counter() - t0)
        i += 1
    return _summary(latencies, time.perf_counter() - t_start)


# ------------------------------------------------------------------------------------ main


def cell_p50(target: str, kind: str, c: int, rows: list) -> float | None:
    return next((s["p50_ms"] for t, k, cc, s in rows if t == target and k == kind and cc == c), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, body: bytes, timeout: float = 180) -> None:
    import requests

    deadline, last = time.monotonic() + timeout, None
    while True:
        try:
            r = requests.post(url, data=body, headers={"content-type": "application/json"}, timeout=10)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except requests.RequestException as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not answering after {timeout} s; last answer: {last}")
        time.sleep(0.5)


def _replica_cpus() -> float:
    from ray_recall.serve.app import RecallDeployment

    return RecallDeployment.ray_actor_options.get("num_cpus", 1)


def _fmt(x, digits=1) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ml100k_dssm.yaml", help="pipeline config of the run to train")
    ap.add_argument("--run-dir", help="serve this existing, complete run instead of training one")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each cell (0.5 s in later rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="above concurrency 1, the cells take turns this many "
                                                          "times, splitting --duration between the turns")
    ap.add_argument("--batch-wait-timeout-s", type=float, nargs="+", default=None,
                    help="measure the real app at each of these batch waits (default: the app's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: synthetic data, 2 s cells")
    ap.add_argument("--out", default="benchmarks/serve.md")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2.0), min(args.warmup, 0.5)

    import ray
    import torch
    from ray import serve

    from ray_recall.runtime import init_ray
    from ray_recall.serve.app import BUILD_ARGS, build_app
    from ray_recall.serve.recaller import Recaller

    load_before = os.getloadavg()
    init_ray(quiet=True)
    run_dir, train_s = train_run(args)
    torch.set_num_threads(1)  # as in a replica (Recaller pins FAISS to 1 thread itself)
    recaller = Recaller(run_dir)
    bodies = workload(recaller, 2000)
    waits = args.batch_wait_timeout_s or [BUILD_ARGS["batch_wait_timeout_s"]]
    max_ongoing = max(2 * BUILD_ARGS["max_batch_size"], 5)  # as build_app sets it

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []  # (target, query, concurrency, summary)
    try:
        first_user = json.loads(bodies["user"][0])["user_id"]
        constant = {"user_id": None, "items": recaller.recall(first_user, K), "unknown_items": [], "batch_size": 1}
        serve.run(noop_app(constant, max_ongoing), name="noop", route_prefix=NOOP_ROUTE)
        _wait_ready(f"{base}{NOOP_ROUTE}/recall", bodies["user"][0])
        for wait in waits:
            serve.run(build_app(run_dir, batch_wait_timeout_s=wait), name="ray_recall_bench", route_prefix="/")
            _wait_ready(f"{base}/recall", bodies["user"][0])
            label = f"endpoint (wait {wait * 1e3:g} ms)" if len(waits) > 1 else "endpoint"
            for c in args.concurrency:
                cells = ([("no-op (ceiling)", "user", f"{base}{NOOP_ROUTE}/recall")] if wait == waits[0] else []) + \
                        [(label, kind, f"{base}/recall") for kind in ("user", "history")]
                raws = {cell: [] for cell in cells}
                if c == 1:  # one request in flight: the cells take turns request by request
                    for cell, raw in zip(cells, load([(url, bodies[kind]) for _, kind, url in cells], 1, args.warmup,
                                                     args.duration * len(cells))):
                        raws[cell].append(raw)
                else:  # the cells take turns, a share of the time each
                    for r in range(args.rounds):
                        for cell in cells:
                            _, kind, url = cell
                            raws[cell] += load([(url, bodies[kind])], c,
                                               args.warmup if r == 0 else min(args.warmup, 0.5), args.duration / args.rounds)
                for (target, kind, _), raw in raws.items():
                    s = summarize(raw)
                    if target.startswith("no-op"):
                        s["mean_batch"] = None  # its constant answer says 1
                    rows.append((target, kind, c, s))
                    print(f"{target} {kind} c={c}: {s}", flush=True)
        gap = cell_p50("no-op (ceiling)", "user", 1, rows) or 5.0
        for kind in ("user", "history"):
            s = in_process(recaller, bodies[kind], args.duration)
            rows.append(("in-process Recaller (floor)", kind, 1, s))
            print(f"in-process {kind}: {s}", flush=True)
        for kind in ("user", "history"):  # a query every no-op round trip, as the replica gets them at concurrency 1
            s = in_process(recaller, bodies[kind], args.duration, gap_s=gap / 1e3)
            rows.append((f"in-process Recaller, {gap:.1f} ms idle before each", kind, 1, s))
            print(f"in-process after {gap:.1f} ms idle, {kind}: {s}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        if not args.run_dir:
            shutil.rmtree(os.path.dirname(run_dir), ignore_errors=True)
    load_after = os.getloadavg()

    # ---- report
    def cell(target, kind, c):
        return next((s for t, k, cc, s in rows if t == target and k == kind and cc == c), None)

    cmd = ".venv/bin/python benchmarks/serve_bench.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    data = "synthetic (--quick)" if args.quick else (f"existing run {args.run_dir}" if args.run_dir else args.config)
    info = recaller.info
    lines = [
        "# Recall endpoint: latency and throughput over HTTP",
        "",
        f"Reproduce: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"Ray {ray.__version__}; client, Serve proxy and replicas on the same cores. Recorded {time.strftime('%Y-%m-%d %H:%M')}. "
        f"Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after.",
        f"Run: {data}; model {info['model']}, {info['items']:,} items, {info['users']:,} users, index {info['index']} "
        f"({info['metric']})" + (f", trained in {train_s:.0f} s (1 epoch)" if train_s else "") + ".",
        f"Endpoint: 1 replica ({_replica_cpus()} CPU), max_batch_size {BUILD_ARGS['max_batch_size']}, "
        f"batch_wait_timeout_s {', '.join(f'{w:g}' for w in waits)}, max_ongoing_requests {max_ongoing}; "
        "FAISS and torch on 1 thread per replica.",
        f"Load: closed loop, k={K}, {args.warmup:g} s warm-up + {args.duration:g} s measured per cell, "
        f"taking turns with the other cells of its concurrency (request by request at concurrency 1, "
        f"in {args.rounds} turns above it); "
        f"history queries send a user's last {HISTORY_LEN} items.",
        "",
        "| target | query | concurrency | requests | errors | p50 ms | p99 ms | QPS | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, kind, c, s in rows:
        lines.append(f"| {target} | {kind} | {c} | {s['requests']:,} | {s['errors']} | {_fmt(s['p50_ms'], 2)} | "
                     f"{_fmt(s['p99_ms'], 2)} | {_fmt(s['qps'])} | {_fmt(s['mean_batch'], 2)} |")
    lines += ["", "Targets (the no-op at the same concurrency is the reference):", ""]
    top = max(args.concurrency)
    for wait in waits:
        label = f"endpoint (wait {wait * 1e3:g} ms)" if len(waits) > 1 else "endpoint"
        for kind in ("user", "history"):
            noop1, real1 = cell("no-op (ceiling)", "user", 1), cell(label, kind, 1)
            nooptop, realtop = cell("no-op (ceiling)", "user", top), cell(label, kind, top)
            if noop1 and real1:
                gap = real1["p50_ms"] - noop1["p50_ms"]
                lines.append(f"- {label}, {kind} queries, p50 at concurrency 1: {gap:+.2f} ms vs the no-op "
                             f"(target <= +{TARGET_P50_MS:g} ms): **{'met' if gap <= TARGET_P50_MS else 'missed'}**")
            if nooptop and realtop:
                ratio = realtop["qps"] / nooptop["qps"]
                ok = ratio >= TARGET_QPS_RATIO and realtop["errors"] == 0
                lines.append(f"- {label}, {kind} queries, QPS at concurrency {top}: {ratio:.0%} of the no-op's with "
                             f"{realtop['errors']} errors (target >= {TARGET_QPS_RATIO:.0%}, 0 errors): "
                             f"**{'met' if ok else 'missed'}**")
    errors = [(t, k, c, s["first_error"]) for t, k, c, s in rows if s["errors"]]
    if errors:
        lines += ["", "First error per failing cell:", ""] + [f"- {t} {k} c={c}: `{e}`" for t, k, c, e in errors]
    write_report(args.out, lines, smoke="2 s cells on a small synthetic run" if args.quick else None)


if __name__ == "__main__":
    main()
