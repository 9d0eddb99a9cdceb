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

from ray_recall.checkpoint import load_run_model
from ray_recall.config import PipelineConfig
from ray_recall.data.preprocess import load_items, load_sequences
from ray_recall.embed import read_embeddings
from ray_recall.metrics import format_table, metrics_from_ranks
from ray_recall.ranking import rank_targets
from ray_recall.storage import RunDir


class Evaluator:
    """Ray Data actor: test samples (user_idx, pos, target) -> exact ranks of the target for the model and popularity."""

    def __init__(self, run_uri: str, mask_seen: bool, batch_size: int):
        torch.set_num_threads(1)
        run = RunDir(run_uri)
        self.model, schema = load_run_model(run)
        self.seqs = load_sequences(run, schema.num_users)
        ids, vecs = read_embeddings(run, "items")
        if not np.array_equal(ids, np.arange(1, schema.num_items + 1)):
            raise ValueError(f"{run.uri}: embeddings/items does not cover items 1..{schema.num_items}; re-run the embed stage")
        self.item_vecs = torch.from_numpy(vecs)
        self.popularity = torch.tensor(load_items(run)["count"].to_numpy(), dtype=torch.float32)
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
    ranked = ray.data.read_parquet(run.uri_of("data", split)).map_batches(
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
    run.write_json(out, "metrics.json" if split == "test" else f"metrics_{split}.json")
    log(f"[evaluate] {split}: {len(ranked):,} users, exact full ranking over all items, "
        f"seen items {'masked' if ec.mask_seen else 'kept'} ({out['seconds']:.1f}s)\n" + format_table(results, ec.ks))
    return out


# --------------------------------------------------------------------------------------------
# The same ranking in-process, for a model object (the notebook API)


def evaluate_model(model, split, ks=None, mask_seen: bool | None = None, batch_size: int | None = None) -> dict[str, float]:
    """Recall / HitRate / NDCG / MRR at every K of `model` on `split`, by exact full ranking, in-process.

    Args:
        model: a model bound to the split's data (trained with MatchTrainer, or `model.bind(data)`).
        split: `data.test` or `data.val` (a SeqSplit; a SeqData means its test split).
        ks: cut-offs (None = the eval config's, 10 and 50).
        mask_seen: exclude items the user interacted with before the target (None = the eval config's, True).
        batch_size: users scored per batch.
    Returns {"recall@K": ..., "hit_rate@K": ..., "ndcg@K": ..., "mrr@K": ...}: the numbers the evaluate
    stage reports for the same model and split (the same `rank_targets` and `metrics_from_ranks`).
    """
    from ray_recall.config import EvalConfig

    defaults = EvalConfig()
    ks = tuple(defaults.ks if ks is None else ([ks] if isinstance(ks, int) else ks))
    EvalConfig(ks=ks)  # validates the cut-offs
    ranks = _model_ranks(model, split, defaults.mask_seen if mask_seen is None else mask_seen,
                         batch_size or defaults.batch_size)
    return metrics_from_ranks(ranks, ks)


def evaluate_recall(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """Recall@k of `model` on `split` (see `evaluate_model`)."""
    return evaluate_model(model, split, [k], mask_seen)[f"recall@{k}"]


def evaluate_hit_rate(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """HitRate@k of `model` on `split` (equal to Recall@k with one held-out item per user)."""
    return evaluate_model(model, split, [k], mask_seen)[f"hit_rate@{k}"]


def evaluate_ndcg(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """NDCG@k of `model` on `split` (see `evaluate_model`)."""
    return evaluate_model(model, split, [k], mask_seen)[f"ndcg@{k}"]


def evaluate_mrr(model, split, k: int = 10, mask_seen: bool | None = None) -> float:
    """MRR@k of `model` on `split` (see `evaluate_model`)."""
    return evaluate_model(model, split, [k], mask_seen)[f"mrr@{k}"]


def _model_ranks(model, split, mask_seen: bool, batch_size: int) -> np.ndarray:
    """0-based rank of each sample's target among all items, [S]."""
    from ray_recall.errors import DataError
    from ray_recall.ranking import embed_all_items

    if hasattr(split, "test") and not hasattr(split, "arrays"):
        split = split.test
    if not hasattr(split, "arrays"):
        raise DataError(f"evaluate: split must be data.test or data.val from generate_seq_features, not {type(split).__name__}")
    data = split.data
    if getattr(model, "is_bound", True) is False or model.num_items != data.num_items:
        raise DataError(f"evaluate: the model is not built for this data ({data.num_items} items): train it with "
                        "MatchTrainer(model, ...).fit(data.train) or call model.bind(data)")
    users, pos, targets = split.arrays()
    was_training = model.training
    model.eval()
    try:
        item_vecs = embed_all_items(model)
        return rank_targets(model, data.sequences, item_vecs, users, pos, targets, data.max_len, mask_seen,
                            batch_size)["model"]
    finally:
        model.train(was_training)
