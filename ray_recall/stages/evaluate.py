"""The evaluation job: exact full ranking of every test user's held-out item, beside most-popular.

Ray Data actors score each test user (history = everything before the test item)
against every item vector the index was built from, mask previously seen items
(switchable), and return the target's exact rank; the driver gathers one rank
per user and computes Recall / HitRate / NDCG / MRR at every K.
"""

from __future__ import annotations

import time

import numpy as np
import ray.data
import torch

from ray_recall.config import PipelineConfig
from ray_recall.errors import DataError
from ray_recall.metrics import format_table, metrics_from_ranks
from ray_recall.models import load_trained
from ray_recall.ranking import rank_targets
from ray_recall.rundir import RunDir


class Evaluator:
    """Ray Data actor: test samples (user_idx, pos, target) -> exact ranks of the target for the model and popularity."""

    def __init__(self, run_uri: str, mask_seen: bool, batch_size: int):
        torch.set_num_threads(1)
        run = RunDir(run_uri)
        self.model, schema = load_trained(run)
        self.seqs = run.read_sequences(schema.num_users)
        ids, vecs = run.read_embeddings("items")
        if not np.array_equal(ids, np.arange(1, schema.num_items + 1)):
            raise DataError(f"{run.uri}: embeddings/items does not cover items 1..{schema.num_items}; re-run the embed stage")
        self.item_vecs = torch.from_numpy(vecs)
        self.popularity = torch.tensor(run.read_item_counts()[1:], dtype=torch.float32)
        self.max_len, self.mask_seen, self.batch_size = schema.max_len, mask_seen, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ranks = rank_targets(self.model, self.seqs, self.item_vecs, batch["user_idx"].astype(np.int64),
                             batch["pos"].astype(np.int64), batch["target"].astype(np.int64), self.max_len,
                             self.mask_seen, self.batch_size, extra_scores={"popularity": self.popularity})
        return {"user_idx": batch["user_idx"], "rank_model": ranks["model"], "rank_popularity": ranks["popularity"]}


def evaluate(cfg: PipelineConfig, run: RunDir, split: str = "test", log=print) -> dict:
    """Metrics of the trained model and of most-popular on `split`; written to <run>/metrics.json."""
    t0 = time.perf_counter()
    ec = cfg.eval
    ranked = ray.data.read_parquet(run.split_uri(split)).map_batches(
        Evaluator, fn_constructor_kwargs={"run_uri": run.uri, "mask_seen": ec.mask_seen, "batch_size": ec.batch_size},
        compute=ray.data.ActorPoolStrategy(size=cfg.compute.embed_actors), num_cpus=cfg.compute.cpus_per_actor,
        batch_size=ec.batch_size * 4, batch_format="numpy",
    ).select_columns(["rank_model", "rank_popularity"]).to_pandas()  # one row per evaluated user
    results = {
        cfg.model.name: metrics_from_ranks(ranked["rank_model"].to_numpy(), ec.ks),
        "most_popular": metrics_from_ranks(ranked["rank_popularity"].to_numpy(), ec.ks),
    }
    out = {"split": split, "num_users": len(ranked), "mask_seen": ec.mask_seen, "ks": list(ec.ks),
           "model": cfg.model.name, "mode": cfg.train.mode, "metrics": results,
           "seconds": round(time.perf_counter() - t0, 2)}
    run.write_metrics(out, split)
    log(f"[evaluate] {split}: {len(ranked):,} users, exact full ranking over all items, "
        f"seen items {'masked' if ec.mask_seen else 'kept'} ({out['seconds']:.1f}s)\n" + format_table(results, ec.ks))
    return out
