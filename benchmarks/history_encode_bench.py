"""One history query's user-tower pass, as a replica runs it, warm and after idle; -> benchmarks/history_encode.md.

    .venv/bin/python benchmarks/history_encode_bench.py        # ~3 min on 2 cores (three ONNX exports)

A history query at the endpoint encodes one 20-item history (`Recaller._encode_histories`). Timed here,
one thread, shipped model sizes (D 64, 2 blocks, 1 head, max_len 50) over a 1M-item table:

    padded to max_len, no_grad        how the Recaller encoded a history before 2026-12-07
    padded to its length, inference   how it does now (`batch.pad_histories`, `torch.inference_mode`)
    ONNX Runtime                      the run's exported user tower (`ray_recall.export`), 1 thread,
                                      fed the max_len window (its width is fixed at export)

each "warm" (calls back to back) and "after 10 ms idle" (a sleep before each call: what a replica sees
at one request in flight, where the caches have gone cold). The methods take turns in blocks of calls,
eight rounds, so that a change in machine load hits all alike; medians over all calls. On this machine
the idle figures move by 2x between hours (the host's wake-up), so compare them within one run. Every
method's vector is checked against the first one's before timing.
"""

import argparse
import os
import platform
import sys
import time
from datetime import datetime

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_recall import batch as B  # noqa: E402
from ray_recall.export import export_model  # noqa: E402
from ray_recall.models import build_model  # noqa: E402
from ray_recall.schema import DataSchema  # noqa: E402
from report import write_report  # noqa: E402

CASES = [("sasrec", {"num_blocks": 2, "num_heads": 1}), ("gru4rec", {}), ("hstu", {"num_blocks": 2, "num_heads": 1})]
MAX_LEN, DIM, HISTORY = 50, 64, 20
ROUNDS, WARMUP = 8, 5
METHODS = ("padded to max_len, no_grad", "padded to its length, inference", "ONNX Runtime")


def padded_to_max_len(history: np.ndarray) -> dict:
    """`pad_histories` as it was before 2026-12-07 (and as the exported tower's fixed width needs it)."""
    batch = B.pad_histories([history], MAX_LEN)
    batch[B.HIST] = torch.nn.functional.pad(batch[B.HIST], (0, MAX_LEN - batch[B.HIST].shape[1]))
    return batch


def methods(model, session) -> dict:
    def before(h):
        with torch.no_grad():
            return model.encode_user(padded_to_max_len(h)).numpy()

    def now(h):
        with torch.inference_mode():
            return model.encode_user(B.pad_histories([h], MAX_LEN)).numpy()

    names = [a.name for a in session.get_inputs()]

    def onnx(h):
        batch = padded_to_max_len(h)
        return session.run(None, {n: batch[n].numpy() for n in names})[0]

    return dict(zip(METHODS, (before, now, onnx)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=400, help="timed calls per method and mode")
    ap.add_argument("--out", default="benchmarks/history_encode.md")
    args = ap.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, args.items + 1, HISTORY) for _ in range(64)]
    schema = DataSchema(num_users=1, num_items=args.items, max_len=MAX_LEN)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    rows = []
    for name, params in CASES:
        torch.manual_seed(0)
        model = build_model(name, schema, DIM, params).eval()
        files, _ = export_model(model)
        session = ort.InferenceSession(files["user"], options, providers=["CPUExecutionProvider"])
        fns = methods(model, session)
        want = fns[METHODS[0]](histories[0])
        for label, fn in fns.items():
            diff = float(np.abs(fn(histories[0]) - want).max())
            assert diff < 1e-5, f"{name}: {label} differs from {METHODS[0]} by {diff:.2g}"
        for mode, idle in (("warm", 0.0), ("after 10 ms idle", 0.01)):
            times = {label: [] for label in fns}
            for r in range(ROUNDS):  # the methods take turns, a block of calls each
                for label, fn in fns.items():
                    for i in range(WARMUP + args.calls // ROUNDS):
                        if idle:
                            time.sleep(idle)
                        t0 = time.perf_counter()
                        fn(histories[i % len(histories)])
                        if i >= WARMUP:  # the block's first calls find the other methods' state in the caches
                            times[label].append(1000 * (time.perf_counter() - t0))
            med = [float(np.median(times[label])) for label in METHODS]
            rows.append((name, mode, *med))
            print(f"{name} {mode}: " + ", ".join(f"{m} {t:.3f} ms" for m, t in zip(METHODS, med)), flush=True)
        del model, session, files
    load = os.getloadavg()[0]
    lines = [
        "# One history query's user-tower pass",
        "",
        "Command: `.venv/bin/python benchmarks/history_encode_bench.py`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, PyTorch "
        f"{torch.__version__}, onnxruntime {ort.__version__}; one thread; recorded {datetime.now():%Y-%m-%d %H:%M} "
        f"(load average {load:.1f} at the end). One {HISTORY}-item history a call; D {DIM}, 2 blocks, 1 head, "
        f"max_len {MAX_LEN}, {args.items:,} items; median of {args.calls} calls a cell, the methods taking turns "
        f"in blocks of calls ({ROUNDS} rounds). Every method gives the first one's vector (checked to 1e-5 before timing).",
        "",
        "| model | calls | " + " | ".join(f"{m} (ms)" for m in METHODS) + " |",
        "|---|---|" + "---:|" * len(METHODS),
    ]
    lines += [f"| {name} | {mode} | " + " | ".join(f"{t:.3f}" for t in med) + " |" for name, mode, *med in rows]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
