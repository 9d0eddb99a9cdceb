"""The run directory: the only coupling between stages, and the one module that knows its layout.

Each stage writes its outputs here and reads what earlier stages wrote, through the typed readers and
writers below; no stage imports another. Layout (every directory written whole, atomically: see
`Storage.staged_dir`):

    config.yaml                       the PipelineConfig of the last run
    manifest.json                     which stages finished, with the config hash they ran with
    data/                             preprocess
      meta.json                         sizes, feature vocabularies, statistics
      users.parquet                     user_idx, raw_id, f_<feature> codes          (the user vocabulary)
      items.parquet                     item_idx, raw_id, count, title, f_<feature>  (the item vocabulary)
      sequences/part-NNNNN.parquet      user_idx, items (time-ordered list), length, duplicates; users of
                                        hash partition N (`user_partition`), sorted by user
      {train,val,test}/part-NNNNN.parquet  user_idx, pos, target: the samples of partition N's users, in
                                        their order (history = items[:pos], cut at batch time)
    train_workers/rank-R.json         where each training worker runs (pid, node)
    checkpoints/<name>/checkpoint_*/  Ray Train's checkpoints: model.pt (ModelFile + optimizer, epoch,
                                      history), history.json
    model/                            train: model.pt (ModelFile), training.json, training_curves.png
    embeddings/                       embed: items/ (item_idx, embedding), users/ (user_idx, embedding), meta.json
    index/                            index: items.faiss, item_ids.npy, meta.json
    metrics.json, metrics_val.json    evaluate
    export/                           `ray-recall export`: user_tower.onnx, item_tower.onnx, export.json

Model files hold only tensors and plain values and are loaded with `torch.load(weights_only=True)`: a
file that would need to unpickle anything else is refused.
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from ray_recall.batch import SequenceTable
from ray_recall.config import PipelineConfig
from ray_recall.errors import ConfigError, DataError
from ray_recall.schema import DataSchema
from ray_recall.storage import Storage
from ray_recall.vocab import Vocabulary

MANIFEST = "manifest.json"
# The data stage's file layout; data/meta.json records it, and data written in another layout is prepared again.
DATA_LAYOUT = 2  # 2: per-partition files, sequences with their timestamps
SPLITS = ("train", "val", "test")
EXPORT_FILES = {"user": "user_tower.onnx", "item": "item_tower.onnx", "info": "export.json"}
STAGES = ("preprocess", "train", "embed", "index", "evaluate")
# The file whose presence says a stage's outputs are complete (each is written last, or in one staged directory).
STAGE_OUTPUTS = {"preprocess": ("data", "meta.json"), "train": ("model", "model.pt"),
                 "embed": ("embeddings", "meta.json"), "index": ("index", "meta.json"), "evaluate": ("metrics.json",)}
# What each stage writes that later stages and Serve read: its files' sizes and SHA-256 go into the manifest
# when the stage finishes, and are checked before anything reads them (`verify_stages`).
STAGE_FILES = {"preprocess": ("data",), "train": ("model",), "embed": ("embeddings",), "index": ("index",)}
# The stages whose outputs each stage (and Serve) reads.
STAGE_INPUTS = {"preprocess": (), "train": ("preprocess",), "embed": ("preprocess", "train"),
                "index": ("embed",), "evaluate": ("preprocess", "train", "embed"),
                "serve": ("preprocess", "train", "embed", "index"), "export": ("preprocess", "train")}
# Config sections each stage's output depends on (cumulative along the pipeline).
STAGE_SECTIONS = {
    "preprocess": ("data",),
    "train": ("data", "model", "train"),
    "embed": ("data", "model", "train"),
    "index": ("data", "model", "train", "index"),
    "evaluate": ("data", "model", "train", "eval"),
}


def partition_file(part: int) -> str:
    return f"part-{part:05d}.parquet"


def user_partition(users: np.ndarray, num_partitions: int) -> np.ndarray:
    """Dense user ids [n] -> the hash partition of each, in 0..num_partitions-1 (splitmix64 of the id).

    The project's own hash, so that the data stage lays out its files the same way on any path and
    any Ray version: partition N's users are in data/sequences/part-N and data/<split>/part-N.
    """
    x = np.asarray(users, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(num_partitions)).astype(np.int64)


def sample_users(users: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """[n] bool: whether each dense user falls in the seeded sample of about `fraction` of all users.

    Decided by a hash of (user, seed) alone, so every process, batch or layout picks the same users.
    """
    if fraction >= 1.0:
        return np.ones(len(users), dtype=bool)
    buckets = 1 << 24
    return user_partition(np.asarray(users, dtype=np.int64) * 1_000_003 + seed, buckets) < fraction * buckets


@dataclass(frozen=True)
class ModelFile:
    """A trained model as stored: enough to rebuild it (`ray_recall.models.build_from_file`) without the code that trained it."""

    name: str  # registry name
    embedding_dim: int
    params: dict  # the constructor's keyword arguments
    state_dict: dict  # parameter and buffer tensors

    def to_dict(self) -> dict:
        return {"name": self.name, "embedding_dim": self.embedding_dim, "params": dict(self.params),
                "state_dict": self.state_dict}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "ModelFile":
        missing = [k for k in ("name", "embedding_dim", "params", "state_dict") if k not in d]
        if missing:
            raise DataError(f"{source}: not a model file (no {missing[0]!r})")
        return cls(d["name"], int(d["embedding_dim"]), dict(d["params"]), d["state_dict"])


@dataclass(frozen=True)
class IndexFiles:
    """A serialized FAISS index, the item id of each of its rows, and its factory string and metric."""

    data: bytes
    ids: np.ndarray
    factory: str
    metric: str
    search_params: dict = None  # FAISS query-time parameters to set on load


def tensor_bytes(obj: dict) -> bytes:
    import torch  # here, not at the top: the data stage's workers read and write run files without torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_tensors(data: bytes | str, source: str) -> dict:
    """torch.load with weights_only=True: tensors and plain Python values only; anything else is refused.

    `data`: the file's bytes, or the path of a local file (read in place, memory-mapped: no second copy)."""
    import torch

    try:
        if isinstance(data, str):
            return torch.load(data, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError for a disallowed global, or a corrupt file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{source}: refused to load: it is not a plain tensor file ({first})") from None


class RunDir(Storage):
    """Typed readers and writers of every artifact in a run directory (see the module docstring for the layout)."""

    # ---- config and manifest -----------------------------------------------------------------
    def write_config(self, cfg: PipelineConfig) -> None:
        self.write_bytes(cfg.to_yaml().encode(), "config.yaml")

    def read_config(self) -> PipelineConfig | None:
        """The config.yaml written by the last run (its run_dir set to this directory), or None."""
        if not self.exists("config.yaml"):
            return None
        raw = yaml.safe_load(self.read_bytes("config.yaml").decode()) or {}
        raw["run_dir"] = self.uri
        try:
            return PipelineConfig.from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"{self.uri_of('config.yaml')}: {e}") from None

    def manifest(self) -> dict:
        return self.read_json(MANIFEST) if self.exists(MANIFEST) else {"stages": {}}

    def stage_done(self, stage: str, cfg: PipelineConfig) -> bool:
        """Whether `stage` finished with the config sections it depends on as in `cfg`, and its outputs exist."""
        info = self.manifest()["stages"].get(stage)
        done = bool(info) and info.get("config_hash") == stage_hash(cfg, stage) and self.exists(*STAGE_OUTPUTS[stage])
        return done and (stage != "preprocess" or self.read_meta().get("layout") == DATA_LAYOUT)

    def forget_stage(self, stage: str) -> None:
        """Drop `stage` from the manifest, before it writes anything: whatever an interrupted run of it leaves
        behind (a directory partly copied into place on an object store, a complete one never recorded) is
        then never taken as complete, even where an earlier run of the same config had recorded it."""
        manifest = self.manifest()
        if manifest["stages"].pop(stage, None) is not None:
            self.write_json(manifest, MANIFEST)

    def record_stage(self, stage: str, cfg: PipelineConfig, **info) -> None:
        """Mark `stage` finished for `cfg`, with the size and SHA-256 of every file it wrote (STAGE_FILES)."""
        manifest = self.manifest()
        manifest["stages"][stage] = {"config_hash": stage_hash(cfg, stage),
                                     "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info,
                                     "files": self._stage_digests(stage)}
        self.write_json(manifest, MANIFEST)

    def record_files(self, stage: str) -> None:
        """Re-record the checksums of `stage`'s files after a deliberate change (a tool that rewrites them)."""
        manifest = self.manifest()
        manifest["stages"].setdefault(stage, {})["files"] = self._stage_digests(stage)
        self.write_json(manifest, MANIFEST)

    def _stage_digests(self, stage: str) -> dict:
        return {path: d for top in STAGE_FILES.get(stage, ()) for path, d in self.digests(top).items()}

    def verify_stages(self, reader: str) -> None:
        """Check the files of the stages `reader` (a stage, or "serve") reads against the manifest's checksums:
        a file missing, truncated or altered since its stage finished is a DataError naming it. Stages recorded
        without checksums (older runs) are not checked."""
        stages = self.manifest()["stages"]
        for stage in STAGE_INPUTS[reader]:
            want = stages.get(stage, {}).get("files")
            if not want:
                continue
            have = self._stage_digests(stage)
            for path, d in want.items():
                got = have.get(path)
                if got is None:
                    problem = "is missing"
                elif got["size"] != d["size"]:
                    problem = f"has {got['size']} bytes, {d['size']} when the {stage} stage wrote it (truncated or altered)"
                elif got["sha256"] != d["sha256"]:
                    problem = f"differs from what the {stage} stage wrote (SHA-256 mismatch)"
                else:
                    continue
                raise DataError(f"{self.uri_of(*path.split('/'))} {problem}; re-run the {stage} stage "
                                f"(--force) or restore the file")

    def adopt_stage(self, source: "RunDir", stage: str) -> None:
        """Take `source`'s finished `stage` as this run's own: its directory (see `Storage.copy_dir_from`) and
        its manifest entry (config hash, checksums). A search's trials share one data stage this way."""
        info = source.manifest()["stages"].get(stage)
        if not info or stage not in STAGE_FILES:
            raise DataError(f"{source.uri}: the {stage} stage has not finished there; nothing to adopt")
        for top in STAGE_FILES[stage]:
            self.copy_dir_from(source, top)
        manifest = self.manifest()
        manifest["stages"][stage] = info
        self.write_json(manifest, MANIFEST)

    def stage_summary(self, stage: str) -> dict:
        return self.manifest()["stages"].get(stage, {}).get("summary", {})

    # ---- data: meta, vocabularies, schema ---------------------------------------------------
    def read_meta(self) -> dict:
        if not self.exists("data", "meta.json"):
            raise DataError(f"{self.uri}: no preprocessed data (data/meta.json); run the preprocess stage first")
        return self.read_json("data", "meta.json")

    def write_meta(self, meta: dict, at: str = "data") -> None:
        self.write_json({**meta, "layout": DATA_LAYOUT}, at, "meta.json")

    def write_vocabularies(self, users: pa.Table, items: pa.Table, at: str = "data") -> None:
        """users: user_idx, raw_id, f_<feature>...; items: item_idx, raw_id, count, title, f_<feature>..."""
        self.write_parquet(users, at, "users.parquet")
        self.write_parquet(items, at, "items.parquet")

    def vocabulary_files(self) -> dict:
        """Where the vocabularies are, relative to the run: row r of each holds dense id r + 1 and its raw_id."""
        return {"users": "data/users.parquet", "items": "data/items.parquet", "raw_id_column": "raw_id",
                "dense_id": "row number + 1 (user_idx / item_idx); 0 is padding and an unknown id"}

    def read_user_vocab(self) -> Vocabulary:
        return Vocabulary(self.read_parquet("data", "users.parquet", columns=["raw_id"]).column("raw_id")
                          .to_numpy(zero_copy_only=False), "user")

    def read_items(self) -> pd.DataFrame:
        """One row per item in dense order: item_idx, raw_id, count (train-part interactions), title."""
        return self.read_parquet("data", "items.parquet", columns=["item_idx", "raw_id", "count", "title"]).to_pandas()

    def read_item_vocab(self) -> Vocabulary:
        return Vocabulary(self.read_parquet("data", "items.parquet", columns=["raw_id"]).column("raw_id")
                          .to_numpy(zero_copy_only=False), "item")

    def read_item_counts(self) -> np.ndarray:
        """[num_items + 1] train-part interactions per dense item; 0 at the padding index 0."""
        counts = self.read_parquet("data", "items.parquet", columns=["count"]).column("count").to_numpy()
        return np.concatenate([[0], counts]).astype(np.int64)

    def read_schema(self) -> DataSchema:
        """Sizes and per-id feature tables: what a model is built from."""
        meta = self.read_meta()
        schema = DataSchema(num_users=meta["num_users"], num_items=meta["num_items"], max_len=meta["max_len"])
        for side, fname, feats, target in (("user", "users.parquet", meta["user_features"], schema.user_features),
                                           ("item", "items.parquet", meta["item_features"], schema.item_features)):
            if not feats:
                continue
            tbl = self.read_parquet("data", fname, columns=[f"f_{name}" for name in feats])
            for name, info in feats.items():
                col = tbl.column(f"f_{name}")
                if info["multi"]:
                    rows = np.array(col.to_pylist(), dtype=np.int64)
                    arr = np.zeros((len(rows) + 1, rows.shape[1]), dtype=np.int64)
                else:
                    rows = col.to_numpy()
                    arr = np.zeros(len(rows) + 1, dtype=np.int64)
                arr[1:] = rows
                target[name] = arr
                schema.cardinality[name] = len(info["values"])
        return schema

    # ---- data: sequences and splits ---------------------------------------------------------
    def sequences_uri(self) -> str:
        return self.uri_of("data", "sequences")

    def write_partition(self, part: int, sequences: pa.Table, splits: dict[str, pa.Table], at: str = "data") -> None:
        """One hash partition's users: their sequences and their samples of every split."""
        self.write_parquet(sequences, at, "sequences", partition_file(part))
        for name, table in splits.items():
            self.write_parquet(table, at, name, partition_file(part))

    def read_sequences(self, num_users: int | None = None) -> SequenceTable:
        """Every user's sequence (CSR arrays, dense user ids 0..num_users)."""
        if num_users is None:
            num_users = self.read_meta()["num_users"]
        names = self.read_parquet_schema("data", "sequences").names
        columns = ["user_idx", "items", "length"] + (["times"] if "times" in names else [])
        return SequenceTable.from_arrow(self.read_parquet("data", "sequences", columns=columns), num_users)

    def read_sequence_sample(self, max_users: int, seed: int = 0) -> pa.Table:
        """Sequence rows of a seeded sample of at most about `max_users` users (all of them if there are fewer).

        Reads the partition files in name order until they hold enough of the sample: memory grows with
        the sample, not with the log.
        """
        total = self.read_meta()["num_sequence_users"]
        fraction = min(1.0, max_users / max(total, 1))
        names = self.files("data", "sequences", suffix=".parquet")
        parts, count = [], 0
        for name in names:
            rows = self.read_parquet("data", "sequences", name)
            rows = rows.filter(pa.array(sample_users(rows.column("user_idx").to_numpy(), fraction, seed)))
            parts.append(rows)
            count += rows.num_rows
            if count >= max_users:
                break
        return pa.concat_tables(parts)

    def split_uri(self, split: str) -> str:
        _check_split(split)
        return self.uri_of("data", split)

    def read_split(self, split: str) -> pd.DataFrame:
        """user_idx, pos, target of every sample of `split`, in file order."""
        _check_split(split)
        return self.read_parquet("data", split).to_pandas()

    # ---- training -----------------------------------------------------------------------------
    def write_worker_info(self, rank: int, info: dict) -> None:
        self.write_json(info, "train_workers", f"rank-{rank}.json")

    def read_worker_infos(self) -> dict[int, dict]:
        return {int(name[5:-5]): self.read_json("train_workers", name)
                for name in self.files("train_workers", suffix=".json") if name.startswith("rank-")}

    def checkpoints_uri(self) -> str:
        return self.uri_of("checkpoints")

    def checkpoints_by_epoch(self, name: str) -> dict[int, str]:
        """{epoch: checkpoint directory (a path on self.fs)} of every complete checkpoint under checkpoints/<name>."""
        out = {}
        for d in self.subdirs("checkpoints", name):
            if d.startswith("checkpoint_") and self.exists("checkpoints", name, d, "history.json"):
                history = json.loads(self.read_bytes("checkpoints", name, d, "history.json"))
                out[history[-1]["epoch"]] = self.path("checkpoints", name, d)
        return out

    def clear_checkpoints(self, name: str) -> None:
        self.delete_dir("checkpoints", name)

    def read_checkpoint(self, name: str, epoch: int) -> dict:
        """The state saved at `epoch`: ModelFile fields, optimizer, epoch, history."""
        d = self.checkpoints_by_epoch(name)[epoch]
        rel = d[len(self.root.rstrip("/")) + 1:].split("/")
        data = self.path(*rel, "model.pt") if self.is_local else self.read_bytes(*rel, "model.pt")
        return read_checkpoint_dir_bytes(data, self.uri_of(*rel, "model.pt"))

    def read_checkpoint_history(self, name: str, epoch: int) -> list[dict]:
        d = self.checkpoints_by_epoch(name)[epoch]
        rel = d[len(self.root.rstrip("/")) + 1:].split("/")
        return json.loads(self.read_bytes(*rel, "history.json"))

    def write_model(self, model: ModelFile, summary: dict, curves_png: bytes) -> None:
        with self.staged_dir("model") as tmp:
            self.write_bytes(tensor_bytes(model.to_dict()), tmp, "model.pt")
            self.write_json(summary, tmp, "training.json")
            self.write_bytes(curves_png, tmp, "training_curves.png")

    def read_model(self) -> ModelFile:
        if not self.exists("model", "model.pt"):
            raise DataError(f"{self.uri}: no trained model (model/model.pt); run the train stage first")
        source = self.uri_of("model", "model.pt")
        # A local file is memory-mapped (no copy of its bytes beside the tensors: at a million items, 256 MB each)
        data = self.path("model", "model.pt") if self.is_local else self.read_bytes("model", "model.pt")
        return ModelFile.from_dict(load_tensors(data, source), source)

    def read_training(self) -> dict:
        return self.read_json("model", "training.json")

    # ---- embeddings ---------------------------------------------------------------------------
    def embeddings_uri(self, side: str, at: str = "embeddings") -> str:
        return self.uri_of(at, _check_side(side))

    def write_embeddings_meta(self, info: dict, at: str = "embeddings") -> None:
        self.write_json(info, at, "meta.json")

    def read_embeddings_meta(self) -> dict:
        if not self.exists("embeddings", "meta.json"):
            raise DataError(f"{self.uri}: no embeddings (embeddings/meta.json); run the embed stage first")
        return self.read_json("embeddings", "meta.json")

    def read_embeddings(self, side: str, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(dense ids [N], vectors [N, D], or [N, K, D] for multi-interest users) of "items" or "users", sorted by id;
        only the `first` of them in id order if given (the rest is never held)."""
        import pyarrow.dataset as pads

        info = self.read_embeddings_meta()
        key = "item_idx" if _check_side(side) == "items" else "user_idx"
        # Batch by batch into the sorted result: the vectors are in memory once, not as a decoded table
        # beside its combined copy beside the sorted one (at a million items, ~200 MB each).
        files = pads.dataset(self.path("embeddings", side), filesystem=self.fs, format="parquet")
        ids = files.to_table(columns=[key]).column(key).to_numpy()
        order = np.argsort(ids)
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        keep = len(ids) if first is None else min(first, len(ids))
        vecs = np.empty((keep, files.schema.field("embedding").type.list_size), dtype=np.float32)
        row = 0
        for batch in files.to_batches(columns=["embedding"], batch_size=1 << 16, use_threads=False):
            flat = batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
            at = place[row:row + batch.num_rows]
            wanted = at < keep
            vecs[at[wanted]] = flat[wanted] if keep < len(ids) else flat
            row += batch.num_rows
        ids = ids[order[:keep]]
        if side == "users" and info["interests"] > 1:
            vecs = vecs.reshape(len(ids), info["interests"], info["dim"])
        return ids, vecs

    # ---- index --------------------------------------------------------------------------------
    def write_index(self, files: IndexFiles, **info) -> None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(files.ids), allow_pickle=False)
        with self.staged_dir("index") as tmp:
            self.write_bytes(files.data, tmp, "items.faiss")
            self.write_bytes(buf.getvalue(), tmp, "item_ids.npy")
            self.write_json({"factory": files.factory, "metric": files.metric, "ntotal": len(files.ids),
                             "search_params": files.search_params or {}, **info}, tmp, "meta.json")

    def read_index(self) -> IndexFiles:
        if not self.exists("index", "meta.json"):
            raise DataError(f"{self.uri}: no index (index/meta.json); run the index stage first")
        meta = self.read_json("index", "meta.json")
        ids = np.load(io.BytesIO(self.read_bytes("index", "item_ids.npy")), allow_pickle=False)
        return IndexFiles(self.read_bytes("index", "items.faiss"), ids, meta["factory"], meta["metric"],
                          meta.get("search_params") or {})

    # ---- exported towers ---------------------------------------------------------------------
    def export_uri(self) -> str:
        return self.uri_of("export")

    def write_export(self, towers: dict[str, bytes], info: dict, out: str | None = None) -> str:
        """The ONNX file of each tower ({"user": bytes, "item": bytes}) and export.json, in <run>/export/ (written
        whole) or in `out` (any URI); returns where they are."""
        if out is None:
            with self.staged_dir("export") as tmp:
                for side, data in towers.items():
                    self.write_bytes(data, tmp, EXPORT_FILES[side])
                self.write_json(info, tmp, EXPORT_FILES["info"])
            return self.export_uri()
        store = Storage(out)
        for side, data in towers.items():
            store.write_bytes(data, EXPORT_FILES[side])
        store.write_json(info, EXPORT_FILES["info"])
        return store.uri

    # ---- metrics ------------------------------------------------------------------------------
    def write_metrics(self, out: dict, split: str = "test") -> None:
        self.write_json(out, _metrics_file(split))

    def read_metrics(self, split: str = "test") -> dict:
        if not self.exists(_metrics_file(split)):
            raise DataError(f"{self.uri}: no {_metrics_file(split)}; run the evaluate stage first")
        return self.read_json(_metrics_file(split))


def stage_hash(cfg: PipelineConfig, stage: str) -> str:
    return cfg.section_hash(*STAGE_SECTIONS[stage])


def write_checkpoint_dir(local_dir: str, model: ModelFile, optimizer: dict, epoch: int, history: list[dict]) -> None:
    """The files of one training checkpoint, in a local directory that Ray Train then persists. Saved straight
    to the file: a large item table and its optimizer moments are not copied into memory on the way."""
    import torch

    torch.save({**model.to_dict(), "optimizer": optimizer, "epoch": epoch, "history": history},
               os.path.join(local_dir, "model.pt"))
    with open(os.path.join(local_dir, "history.json"), "w") as f:
        json.dump(history, f)


def read_checkpoint_dir(local_dir: str) -> dict:
    path = os.path.join(local_dir, "model.pt")
    return read_checkpoint_dir_bytes(path, path)


def read_checkpoint_dir_bytes(data: bytes | str, source: str) -> dict:
    """A checkpoint's state from its bytes or its local path (see `load_tensors`)."""
    state = load_tensors(data, source)
    missing = [k for k in ("optimizer", "epoch", "history") if k not in state]
    if missing:
        raise DataError(f"{source}: not a training checkpoint (no {missing[0]!r})")
    state["model"] = ModelFile.from_dict(state, source)
    return state


def _metrics_file(split: str) -> str:
    _check_split(split)
    return "metrics.json" if split == "test" else f"metrics_{split}.json"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def _check_side(side: str) -> str:
    if side not in ("items", "users"):
        raise ValueError(f"side must be 'items' or 'users', got {side!r}")
    return side
