"""The index stage: a FAISS index over the item embeddings, with its recall of exact search when approximate."""

from __future__ import annotations

import time

from ray_recall.config import PipelineConfig
from ray_recall.retrieval import VectorIndex, ann_recall
from ray_recall.rundir import RunDir


def build_index(cfg: PipelineConfig, run: RunDir, log=print) -> dict:
    """Index <run>/embeddings/items with cfg.index; if approximate, report its recall of the exact top 10."""
    t0 = time.perf_counter()
    ids, vecs = run.read_embeddings("items")
    index = VectorIndex(cfg.index.factory, cfg.index.metric, cfg.index.train_sample, cfg.train.seed).fit(vecs, ids)
    if cfg.index.search_params:
        index.set_search_params(**cfg.index.search_params)
    info = {"factory": cfg.index.factory, "metric": cfg.index.metric, "ntotal": len(index),
            "search_params": dict(cfg.index.search_params),
            "build_seconds": round(time.perf_counter() - t0, 3)}
    if cfg.index.factory != "Flat":
        _, users = run.read_embeddings("users", first=2000)  # the queries: not every user's vector on the driver
        info["ann_recall@10"] = ann_recall(index, VectorIndex("Flat", cfg.index.metric).fit(vecs, ids), users, 10)
    index.save(run, **{k: v for k, v in info.items() if k not in ("factory", "metric", "ntotal", "search_params")})
    log(f"[index] {cfg.index.factory} ({cfg.index.metric}) over {len(index):,} items in {info['build_seconds']:.2f}s"
        + (f"; recall of exact top-10: {info['ann_recall@10']:.4f}" if "ann_recall@10" in info else ""))
    return info
