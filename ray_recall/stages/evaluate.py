"""The evaluation job: exact full ranking of each test user's held-out item, beside most-popular.

Ray Data streams the users' sequence rows to an actor pool; an actor cuts each row's target (test:
the last item, validation: the one before) and history (everything before it), scores the target
against every item vector the index was built from, in blocks of bounded memory, masks the items
seen before it (switchable) and returns its exact rank. No actor holds more than its batch of users
and the item vectors. The driver gathers one rank per user and computes Recall / HitRate / NDCG / MRR
at every K, with their standard errors.

A small run (`compute.in_process_max_users`) is ranked by the same `Evaluator` in this process.

With more users than `eval.max_users`, a seeded sample of about that many (by a hash of the user id,
so the same users whatever the layout) is evaluated, and metrics.json says so.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import ray.data
import torch

from ray_recall.batch import in_batches, split_targets
from ray_recall.config import PipelineConfig
from ray_recall.errors import DataError
from ray_recall.metrics import format_table, metrics_from_ranks, standard_errors
from ray_recall.models import load_trained
from ray_recall.ranking import rank_targets
from ray_recall.rundir import RunDir, sample_users
from ray_recall.runtime import bound_heap_growth, map_on_actors


class Evaluator:
    """Ray Data actor: sequence rows -> exact ranks of each user's `split` target for the model and most-popular."""

    def __init__(self, run_uri: str, mask_seen: bool, batch_size: int, split: str = "test",
                 sample_fraction: float = 1.0, seed: int = 0, threads: int | None = 1):
        if threads:
            torch.set_num_threads(threads)
            bound_heap_growth()  # an actor: batch after batch of the same shapes
        run = RunDir(run_uri)
        self.model, schema = load_trained(run)
        ids, vecs = run.read_embeddings("items")
        if not np.array_equal(ids, np.arange(1, schema.num_items + 1)):
            raise DataError(f"{run.uri}: embeddings/items does not cover items 1..{schema.num_items}; re-run the embed stage")
        self.item_vecs = torch.from_numpy(vecs)
        self.popularity = torch.tensor(run.read_item_counts()[1:], dtype=torch.float32)
        self.max_len, self.mask_seen, self.batch_size = schema.max_len, mask_seen, batch_size
        self.split, self.fraction, self.seed = split, sample_fraction, seed

    def __call__(self, rows: pa.Table) -> dict[str, np.ndarray]:
        if self.fraction < 1.0:
            rows = rows.filter(pa.array(sample_users(rows.column("user_idx").to_numpy(), self.fraction, self.seed)))
        local, users, pos, targets = split_targets(rows, self.split)
        ranks = rank_targets(self.model, local, self.item_vecs, np.arange(len(users)), pos, targets, self.max_len,
                             self.mask_seen, self.batch_size, extra_scores={"popularity": self.popularity},
                             user_ids=users)
        return {"user_idx": users, "rank_model": ranks["model"], "rank_popularity": ranks["popularity"]}


def evaluate(cfg: PipelineConfig, run: RunDir, split: str = "test", log=print) -> dict:
    """Metrics of the trained model and of most-popular on `split`; written to <run>/metrics.json."""
    t0 = time.perf_counter()
    ec = cfg.eval
    meta = run.read_meta()
    total = meta["num_sequence_users"]
    fraction = 1.0 if ec.max_users is None or total <= ec.max_users else ec.max_users / total
    columns = ["user_idx", "items", "length"]
    kwargs = {"run_uri": run.uri, "mask_seen": ec.mask_seen, "batch_size": ec.batch_size, "split": split,
              "sample_fraction": fraction, "seed": cfg.train.seed}
    in_process = cfg.compute.in_process(meta)
    if in_process:
        evaluator = Evaluator(**kwargs, threads=None)
        rows = run.read_parquet("data", "sequences", columns=columns)
        ranked = in_batches(lambda b: pa.table(evaluator(b)), rows, ec.batch_size * 4).to_pandas()
    else:
        ranked = map_on_actors(
            ray.data.read_parquet(run.sequences_uri()).select_columns(columns), Evaluator, fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=cfg.compute.embed_actors), num_cpus=cfg.compute.cpus_per_actor,
            batch_size=ec.batch_size * 4, batch_format="pyarrow",
        ).select_columns(["rank_model", "rank_popularity"]).to_pandas()  # one row per evaluated user
    ranks = {cfg.model.name: ranked["rank_model"].to_numpy(), "most_popular": ranked["rank_popularity"].to_numpy()}
    results = {name: metrics_from_ranks(r, ec.ks) for name, r in ranks.items()}
    out = {"split": split, "num_users": len(ranked), "num_users_total": total, "sampled": fraction < 1.0,
           "mask_seen": ec.mask_seen, "ks": list(ec.ks), "model": cfg.model.name, "mode": cfg.train.mode,
           "metrics": results, "standard_errors": {name: standard_errors(r, ec.ks) for name, r in ranks.items()},
           "seconds": round(time.perf_counter() - t0, 2)}
    run.write_metrics(out, split)
    se = out["standard_errors"][cfg.model.name][f"recall@{ec.ks[0]}"]
    who = (f"a seeded sample of {len(ranked):,} of {total:,} users (eval.max_users)" if fraction < 1.0
           else f"{len(ranked):,} users")
    log(f"[evaluate] {split}: {who}, exact full ranking over all items, seen items "
        f"{'masked' if ec.mask_seen else 'kept'}; standard error of recall@{ec.ks[0]} {se:.4f} ({out['seconds']:.1f}s"
        f"{', in this process: a small run' if in_process else ''})\n"
        + format_table(results, ec.ks))
    return out
