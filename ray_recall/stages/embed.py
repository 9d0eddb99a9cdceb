"""The embedding job: Ray Data actors load the trained model and embed every item and every user.

Written to <run>/embeddings/{items,users}/ as Parquet (id, embedding: fixed-size list of
float32; multi-interest users store K*D values per row) plus embeddings/meta.json.
User vectors use each user's whole known sequence: they are the vectors served online. The users'
actors receive their sequence rows from Ray Data and hold nothing else of the log. A small run
(`compute.in_process_max_users`) is embedded by the same `Embedder` in this process, batch by batch.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import ray.data
import torch

from ray_recall import batch as B
from ray_recall.batch import SequenceTable, in_batches, user_batch
from ray_recall.config import PipelineConfig
from ray_recall.models import describe_trained, load_trained
from ray_recall.rundir import RunDir
from ray_recall.runtime import bound_heap_growth, map_on_actors


_BATCH = 1024  # rows a batch; user rows carry their sequences
_USER_COLUMNS = ["user_idx", "items", "times", "length"]


def _vectors_table(key: str, ids: np.ndarray, vecs: np.ndarray) -> pa.Table:
    flat = np.ascontiguousarray(vecs.reshape(len(ids), -1), dtype=np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return pa.table({key: pa.array(ids, pa.int64()), "embedding": emb})


class Embedder:
    """Ray Data actor: dense ids -> embeddings, for one side ("item" or "user")."""

    def __init__(self, run_uri: str, side: str, threads: int | None = 1):
        if threads:
            torch.set_num_threads(threads)  # several actors share the node's cores
            bound_heap_growth()  # an actor: batch after batch of the same shapes
        run = RunDir(run_uri)
        self.model, schema = load_trained(run)
        self.side = side
        self.max_len = schema.max_len

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.side == "item":
            ids = batch.column("item_idx").to_numpy().astype(np.int64)
            vecs = self.model.encode_item({B.ITEM: torch.from_numpy(ids)})
            return _vectors_table("item_idx", ids, vecs.numpy())
        local = SequenceTable.of_rows(batch)  # these users' sequences, by row
        rows = np.arange(batch.num_rows)
        ids = batch.column("user_idx").to_numpy().astype(np.int64)
        vecs = self.model.encode_user(user_batch(local, rows, local.length(rows), self.max_len, ids))
        return _vectors_table("user_idx", ids, vecs.numpy())


def _item_ids(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"item_idx": batch["id"] + 1}


def embed(cfg: PipelineConfig, run: RunDir, log=print) -> dict:
    t0 = time.perf_counter()
    meta = run.read_meta()
    in_process = cfg.compute.in_process(meta)
    with run.staged_dir("embeddings") as tmp:
        (_embed_in_process if in_process else _embed_on_ray_data)(cfg, run, meta, tmp)
        dim, interests = describe_trained(run)  # the driver never holds the model's weights
        info = {"dim": dim, "interests": interests, "num_items": meta["num_items"],
                "num_users": meta["num_sequence_users"], "seconds": round(time.perf_counter() - t0, 2)}
        run.write_embeddings_meta(info, at=tmp)
    log(f"[embed] {info['num_items']:,} items and {info['num_users']:,} users embedded (D={info['dim']}"
        f"{', K=' + str(info['interests']) if info['interests'] > 1 else ''}) in {info['seconds']:.1f}s"
        + (" (in this process: a small run)" if in_process else ""))
    return info


def _embed_on_ray_data(cfg: PipelineConfig, run: RunDir, meta: dict, tmp: str) -> None:
    compute = dict(compute=ray.data.ActorPoolStrategy(size=cfg.compute.embed_actors), num_cpus=cfg.compute.cpus_per_actor,
                   batch_size=_BATCH, batch_format="pyarrow")  # users carry their sequences: bounded batches
    items = map_on_actors(ray.data.range(meta["num_items"]).map_batches(_item_ids), Embedder,
                          fn_constructor_kwargs={"run_uri": run.uri, "side": "item"}, **compute)
    users = map_on_actors(ray.data.read_parquet(run.sequences_uri()).select_columns(_USER_COLUMNS), Embedder,
                          fn_constructor_kwargs={"run_uri": run.uri, "side": "user"}, **compute)
    items.write_parquet(run.embeddings_uri("items", at=tmp))
    users.write_parquet(run.embeddings_uri("users", at=tmp))


def _embed_in_process(cfg: PipelineConfig, run: RunDir, meta: dict, tmp: str) -> None:
    """The same Embedder over the same batches, in this process (a small run: no actor pool to start)."""
    items = pa.table({"item_idx": pa.array(np.arange(1, meta["num_items"] + 1), pa.int64())})
    users = run.read_parquet("data", "sequences", columns=_USER_COLUMNS)
    for side, table in (("item", items), ("user", users)):
        vectors = in_batches(Embedder(run.uri, side, threads=None), table, _BATCH)
        run.write_parquet(vectors, tmp, f"{side}s", "part-00000.parquet")
