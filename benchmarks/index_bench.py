"""FAISS indexes through `ray_recall.index.VectorIndex` on 1M embedding-like item vectors; -> benchmarks/index.md.

    .venv/bin/python benchmarks/index_bench.py                                  # 1M x 64, ~5-10 min on 2 idle cores
    .venv/bin/python benchmarks/index_bench.py --quick --out /tmp/index_smoke.md  # 50k x 64, 1-2 min

For each index: build time (train on a sample + add, as `VectorIndex.fit` does it), size, query
throughput on a batch of 1000 queries, single-query latency, and recall@10 against exact search
(`Flat`, the same metric), all through the wrapper the pipeline and the endpoint use (so its input
preparation and id mapping are in the figures).

Vectors (`EmbeddingSpace`): popularity-skewed clusters on a curved low-dimensional manifold,
L2-normalized (as the models' `normalize: true` towers give), inner product (= cosine): the shape
learned embeddings have, not uniform noise (on which every ANN index looks worse than it is in
practice) nor well-separated blobs (on which IVF looks perfect). Queries are "users": a mix of two
clusters plus noise, so a query is not a copy of any item.

Threads: builds and the 1000-query batch use every core FAISS sees (`--threads`); single queries
run on 1 thread, as in the endpoint's replicas (`Recaller` pins FAISS to 1 thread).
"""

import argparse
import os
import platform
import resource
import shlex
import sys
import tempfile
import time

import faiss
import numpy as np

from ray_recall.index import VectorIndex
from report import write_report

K = 10


class EmbeddingSpace:
    """Embedding-like vectors: clusters in a low-dimensional latent space, lifted into `dim` dimensions.

    Latent: a Gaussian mixture in `latent_dim` dimensions (10, the intrinsic dimension faiss's own
    SyntheticDataset uses) whose cluster sizes follow popularity (a few large clusters, many small
    ones) and whose spread makes neighbouring clusters touch. Lift: faiss's SyntheticDataset map,
    sin(z A * f) with random A and per-dimension frequencies f, so that the clusters lie on a curved
    manifold rather than in a flat subspace. Vectors are unit length (the models' `normalize: true`).
    """

    def __init__(self, dim: int, clusters: int, latent_dim: int = 10, spread: float = 0.5, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((clusters, latent_dim)).astype(np.float32)
        popularity = 1.0 / np.arange(1, clusters + 1) ** 0.8
        self.popularity = popularity / popularity.sum()
        self.spread = spread
        self.lift_a = self.rng.random((latent_dim, dim)).astype(np.float32)
        self.lift_f = (self.rng.random(dim) * 4 + 0.1).astype(np.float32)

    def _lift(self, latent: np.ndarray) -> np.ndarray:
        out = np.empty((len(latent), self.lift_a.shape[1]), dtype=np.float32)
        for start in range(0, len(latent), 100_000):  # in chunks: bounded temporaries
            z = latent[start:start + 100_000]
            out[start:start + len(z)] = np.sin((z @ self.lift_a) * self.lift_f)
        faiss.normalize_L2(out)
        return out

    def items(self, n: int) -> np.ndarray:
        """[n, dim] item vectors: a cluster drawn by popularity, plus noise."""
        assign = self.rng.choice(len(self.centres), n, p=self.popularity)
        noise = self.rng.standard_normal((n, self.centres.shape[1]), dtype=np.float32)
        return self._lift(self.centres[assign] + self.spread * noise)

    def users(self, n: int) -> np.ndarray:
        """[n, dim] query vectors: two clusters' centres mixed (the heavier one first), plus noise."""
        a, b = self.rng.integers(len(self.centres), size=(2, n))
        w = self.rng.uniform(0.5, 1.0, size=(n, 1)).astype(np.float32)
        noise = self.rng.standard_normal((n, self.centres.shape[1]), dtype=np.float32)
        return self._lift(w * self.centres[a] + (1 - w) * self.centres[b] + self.spread * noise)


def _rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux; nan elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KB on Linux


def _index_mb(index: VectorIndex) -> float:
    """Size of the FAISS index as written to disk (the run's index/items.faiss), in MB."""
    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(index.index, f.name)
        return os.path.getsize(f.name) / 2**20


def recall_at_k(got: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the index returned (as `ray_recall.index.ann_recall`)."""
    k = exact.shape[1]
    return float(np.mean([len(set(g) & set(e)) / k for g, e in zip(got.tolist(), exact.tolist())]))


def measure(index: VectorIndex, queries: np.ndarray, exact_ids: np.ndarray | None, threads: int,
            single: int, repeats: int) -> dict:
    """Batch throughput (all `threads`), single-query latency (1 thread) and recall@K of `index` as set up now."""
    faiss.omp_set_num_threads(threads)
    index.search(queries[:10], K)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids, _ = index.search(queries, K)  # [Q, K]
        best = min(best, time.perf_counter() - t0)
    faiss.omp_set_num_threads(1)
    lat = []
    for q in queries[:single]:
        t0 = time.perf_counter()
        index.search(q[None, :], K)
        lat.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    lat_ms = np.asarray(lat) * 1e3
    return {"ids": ids, "batch_qps": len(queries) / best, "p50_ms": float(np.percentile(lat_ms, 50)),
            "p99_ms": float(np.percentile(lat_ms, 99)),
            "recall": 1.0 if exact_ids is None else recall_at_k(ids, exact_ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000, help="queries in the batch (and for recall@10)")
    ap.add_argument("--single", type=int, default=300, help="single queries timed one by one")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    ap.add_argument("--threads", type=int, default=faiss.omp_get_max_threads(), help="FAISS threads for builds and batches")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50k items, 200 queries, IVF256")
    ap.add_argument("--out", default="benchmarks/index.md")
    args = ap.parse_args()
    if args.quick:
        args.items, args.queries, args.single, args.nlist = min(args.items, 50_000), 200, 50, 256
    clusters = max(16, args.items // 1000)
    pq_m = args.dim // 4  # 4 dimensions per PQ sub-quantizer, 8 bits each: dim/4 bytes per vector
    # (factory string, [search params], ...): every index is built once and searched with each setting.
    specs = [
        ("Flat", [{}]),
        (f"IVF{args.nlist},Flat", [{"nprobe": 8}, {"nprobe": 32}]),
        ("HNSW32", [{"efSearch": 64}, {"efSearch": 128}]),
        (f"IVF{args.nlist},PQ{pq_m}", [{"nprobe": 8}, {"nprobe": 32}]),
        # The same without polysemous training, which FAISS does by default for IVF,PQ and which only
        # serves polysemous search (a Hamming threshold, never set here): the build-time difference.
        (f"IVF{args.nlist},PQ{pq_m}np", [{"nprobe": 32}]),
    ]
    repeats = 3

    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    space = EmbeddingSpace(args.dim, clusters)
    items = space.items(args.items)
    queries = space.users(args.queries)
    gen_s = time.perf_counter() - t0
    ids = np.arange(1, args.items + 1)  # dense item ids start at 1, as in a run
    data_rss = _rss_mb()
    print(f"{args.items:,} x {args.dim} items, {clusters} clusters, {args.queries} queries in {gen_s:.1f} s; "
          f"RSS {data_rss:.0f} MB", flush=True)

    rows, exact_ids = [], None
    for factory, settings in specs:
        rss_before = _rss_mb()
        t0 = time.perf_counter()
        index = VectorIndex(factory, metric="ip").fit(items, ids)
        build_s = time.perf_counter() - t0
        size_mb, rss_after = _index_mb(index), _rss_mb()
        for params in settings:
            if params:
                index.set_search_params(**params)
            m = measure(index, queries, exact_ids, args.threads, args.single, repeats)
            if factory == "Flat":
                exact_ids = m["ids"]
            rows.append({"factory": factory, "params": ", ".join(f"{k} {v}" for k, v in params.items()) or "exact",
                         "build_s": build_s, "size_mb": size_mb, "rss_delta_mb": rss_after - rss_before, **m})
            print(f"{factory} {params}: build {build_s:.1f} s, {size_mb:.0f} MB, {m['batch_qps']:,.0f} q/s batch, "
                  f"p50 {m['p50_ms']:.3f} ms, recall@{K} {m['recall']:.4f}", flush=True)
        del index

    cmd = ".venv/bin/python benchmarks/index_bench.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    load = os.getloadavg()
    lines = [
        f"# Vector index: build, throughput, latency and recall@{K} ({args.items:,} x {args.dim})",
        "",
        f"Reproduce: `{cmd}`",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"faiss {faiss.__version__}, numpy {np.__version__}. Recorded {time.strftime('%Y-%m-%d %H:%M')}; "
        f"load average (1 min) {load[0]:.1f} at the end.",
        f"Data: {args.items:,} unit-length {args.dim}-d item vectors, {clusters} popularity-skewed clusters in a "
        f"10-d latent space lifted non-linearly (see `EmbeddingSpace`), generated in {gen_s:.1f} s; "
        f"{args.queries} user-like queries; inner product. Through `ray_recall.index.VectorIndex` (fit = train on a sample of "
        f"100,000 + add; search maps positions to item ids).",
        f"Threads: build and batch search {args.threads} (FAISS OpenMP); single-query latency 1 thread "
        f"({args.single} queries, one at a time), as in the endpoint's replicas. Batch: best of {repeats} "
        f"passes over the {args.queries} queries.",
        f"Memory: the item matrix takes {items.nbytes / 2**20:.0f} MB; process RSS {data_rss:.0f} MB after "
        f"generating the data; process peak RSS {_peak_rss_mb():.0f} MB over the whole run.",
        "",
        f"| index | search | build s | index MB | RSS +MB at build | batch queries/s | 1-query p50 ms | "
        f"1-query p99 ms | recall@{K} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    previous = None
    for r in rows:
        same = r["factory"] == previous
        previous = r["factory"]
        build = "〃" if same else f"{r['build_s']:.1f}"
        size = "〃" if same else f"{r['size_mb']:.0f}"
        delta = "〃" if same else f"{r['rss_delta_mb']:.0f}"
        lines.append(f"| {r['factory']} | {r['params']} | {build} | {size} | {delta} | {r['batch_qps']:,.0f} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['recall']:.4f} |")
    lines += ["", "`index MB`: the index as written to the run (`index/items.faiss`). `RSS +MB at build`: how much "
                  "the process grew while building it (the training sample and FAISS buffers included; "
                  "memory freed by an earlier index may be reused, so read it as a lower bound)."]
    write_report(args.out, lines, smoke=f"{args.items:,} items" if args.quick else None)


if __name__ == "__main__":
    main()
