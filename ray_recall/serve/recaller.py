"""`Recaller`: top-K items for a user of a trained run. Plain Python, no Ray: the Serve app is a thin adapter."""

from __future__ import annotations

import numpy as np

from ray_recall.data.preprocess import load_items, load_meta, load_sequences, load_user_ids
from ray_recall.data.vocab import lookup
from ray_recall.embed import read_embeddings
from ray_recall.errors import RayRecallError
from ray_recall.index import VectorIndex, merge_interests
from ray_recall.storage import RunDir


class UnknownUserError(RayRecallError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class Recaller:
    """Loads <run>/ (vocab, user embeddings, index, sequences) and answers recall queries in original ids."""

    def __init__(self, run_uri: str):
        import faiss

        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        self.run = RunDir(run_uri)
        meta = load_meta(self.run)
        self.user_raw = load_user_ids(self.run)  # dense id d -> user_raw[d - 1]
        items = load_items(self.run)
        self.item_raw = items["raw_id"].to_numpy()
        self.titles = items["title"].to_numpy()
        self.seqs = load_sequences(self.run, meta["num_users"])
        ids, vecs = read_embeddings(self.run, "users")
        self.user_vecs = np.zeros((meta["num_users"] + 1,) + vecs.shape[1:], dtype=np.float32)
        self.user_vecs[ids] = vecs
        self.has_vector = np.zeros(meta["num_users"] + 1, dtype=bool)
        self.has_vector[ids] = True
        self.index = VectorIndex.load(self.run)
        self.info = {"run": self.run.uri, "index": self.index.factory, "metric": self.index.metric,
                     "items": len(self.index), "users": int(len(ids))}

    def dense_user(self, user_id) -> int:
        d = int(lookup(np.asarray(self.user_raw), np.asarray([user_id]))[0])
        if d == 0 or not self.has_vector[d]:
            raise UnknownUserError(f"unknown user_id {user_id!r}: not in this run's users")
        return d

    def history(self, user_id) -> list:
        """The user's known items (original ids), oldest first."""
        return self.item_raw[self.seqs.sequence(self.dense_user(user_id)) - 1].tolist()

    def recall(self, user_id, k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """Top-k items for a known user: [{"item_id": original id, "score": float, "title": str}, ...]."""
        d = self.dense_user(user_id)
        seen = self.seqs.sequence(d) if exclude_seen else np.zeros(0, np.int64)
        vec = self.user_vecs[d]
        fetch = min(k + len(seen), len(self.index))
        ids, scores = self.index.search(vec.reshape(-1, vec.shape[-1]), fetch)
        if vec.ndim == 2:  # multi-interest: search every interest, merge by best score
            ids, scores = merge_interests(ids, scores, fetch)
        else:
            ids, scores = ids[0], scores[0]
        keep = (ids > 0) & ~np.isin(ids, seen)
        ids, scores = ids[keep][:k], scores[keep][:k]
        return [{"item_id": _py(self.item_raw[i - 1]), "score": float(s), "title": str(self.titles[i - 1])}
                for i, s in zip(ids, scores)]


def _py(v):
    return v.item() if hasattr(v, "item") else v
