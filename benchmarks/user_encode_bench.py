"""A causal model's user vector: the last block at the last position only, against the full pass; -> benchmarks/user_encode.md.

    .venv/bin/python benchmarks/user_encode_bench.py

`encode_user` of SASRec and HSTU computes every block but the last at every position and the last block
at each row's last real position only; before, it ran the full pass and took the state there
(`gather_last(encode_sequence(...))`, still what training scores). Both are timed here in one process,
one thread, inference mode, shipped model sizes (D 64, 2 blocks, 1 head, max_len 50), histories of
20-50 items, interleaved in rounds so that a change in machine load hits both alike; the median round
is reported. B = 1 is a history query at the endpoint; B = 1,024 a block of the embed stage's users.
"""

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ray_recall import batch as B  # noqa: E402
from ray_recall.models import build_model  # noqa: E402
from ray_recall.models.layers import gather_last, length_mask  # noqa: E402
from ray_recall.schema import DataSchema  # noqa: E402

CASES = [("sasrec", {"num_blocks": 2, "num_heads": 1}), ("hstu", {"num_blocks": 2, "num_heads": 1})]
MAX_LEN, ITEMS, DIM = 50, 100_000, 64


def user_batch(n: int, timed: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    hist_len = torch.randint(20, MAX_LEN + 1, (n,), generator=g)
    hist = torch.randint(1, ITEMS + 1, (n, MAX_LEN), generator=g) * length_mask(hist_len, MAX_LEN)
    batch = {B.USER: torch.zeros(n, dtype=torch.long), B.HIST: hist, B.HIST_LEN: hist_len}
    if timed:
        batch[B.HIST_TIME] = torch.cumsum(torch.rand(n, MAX_LEN, dtype=torch.float64, generator=g) * 1e5, 1)
    return batch


def time_once(fn, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return 1000 * (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/user_encode.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    schema = DataSchema(num_users=1, num_items=ITEMS, max_len=MAX_LEN)
    rows = []
    for name, params in CASES:
        model = build_model(name, schema, DIM, params).eval()
        for n, reps in ((1, 500), (1024, 3)):
            batch = user_batch(n, timed=name == "hstu")
            full = lambda: gather_last(model.encode_sequence(batch), batch[B.HIST_LEN])  # noqa: E731
            last = lambda: model.encode_user(batch)  # noqa: E731
            times = {"full": [], "last": []}
            with torch.inference_mode():
                torch.testing.assert_close(last(), full(), atol=1e-6, rtol=1e-5)
                for fn in (full, last):
                    time_once(fn, max(1, reps // 5))  # warm-up
                for _ in range(args.rounds):
                    times["full"].append(time_once(full, reps))
                    times["last"].append(time_once(last, reps))
            f, s = statistics.median(times["full"]), statistics.median(times["last"])
            rows.append((name, n, f, s))
            print(f"{name} B={n}: full pass {f:.3f} ms, last position {s:.3f} ms ({f / s:.2f}x)", flush=True)
    load = os.getloadavg()[0]
    lines = [
        "# A causal model's user vector: the last block at the last position only",
        "",
        f"Command: `.venv/bin/python benchmarks/user_encode_bench.py`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, PyTorch "
        f"{torch.__version__}; one thread; recorded {datetime.now():%Y-%m-%d %H:%M} (load average {load:.1f} at the end). "
        f"Median of {args.rounds} interleaved rounds; D {DIM}, 2 blocks, 1 head, max_len {MAX_LEN}, histories of "
        f"20-{MAX_LEN} items (HSTU with timestamps). The two give the same vectors (checked to 1e-6 before timing).",
        "",
        "| model | users a call | full pass, state at the last position (ms) | last block at the last position (ms) | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {n:,} | {f:.3f} | {s:.3f} | {f / s:.2f}x |" for name, n, f, s in rows]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
