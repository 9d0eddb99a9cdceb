"""Vector retrieval with FAISS: any `index_factory` string, inner-product / cosine / L2, save and load."""

from __future__ import annotations

import faiss
import numpy as np

from ray_recall.rundir import IndexFiles, RunDir

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_ALIASES = {"angular": "cosine", "dot": "ip", "inner_product": "ip", "euclidean": "l2"}


class VectorIndex:
    """A FAISS index over item vectors that answers with the caller's item ids.

        index = VectorIndex(metric="cosine").fit(item_vectors, item_ids)
        ids, scores = index.query(user_vector, n=10)

    Scores are "higher is better" for every metric (negated squared distance for l2).
    """

    def __init__(self, factory: str = "Flat", metric: str = "ip", train_sample: int = 100_000, seed: int = 0):
        metric = _ALIASES.get(metric, metric)
        if metric not in _METRICS:
            raise ValueError(f"metric={metric!r} is unknown; choose one of {sorted(_METRICS) + sorted(_ALIASES)}")
        self.factory, self.metric, self.train_sample, self.seed = factory, metric, train_sample, seed
        self.search_params: dict = {}
        self.index: faiss.Index | None = None
        self.ids: np.ndarray | None = None

    def _prep(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim == 1:
            x = x[None, :]
        if self.metric == "cosine":
            x = x.copy()
            faiss.normalize_L2(x)
        return x

    def fit(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> "VectorIndex":
        x = self._prep(vectors)
        try:
            index = faiss.index_factory(x.shape[1], self.factory, _METRICS[self.metric])
        except RuntimeError as e:
            raise ValueError(f"index factory string {self.factory!r} is not valid for FAISS: {str(e).splitlines()[0]}") from None
        if not index.is_trained:
            rng = np.random.default_rng(self.seed)
            sample = x[rng.choice(len(x), min(len(x), self.train_sample), replace=False)]
            index.train(sample)
        index.add(x)
        self.index = index
        self.ids = np.arange(len(x)) if ids is None else np.asarray(ids)
        return self

    def set_search_params(self, **params) -> None:
        """Query-time knobs, e.g. nprobe=16 (IVF) or efSearch=128 (HNSW)."""
        ps = faiss.ParameterSpace()
        for k, v in params.items():
            try:
                ps.set_index_parameter(self.index, k, v)
            except RuntimeError as e:
                raise ValueError(f"index search parameter {k}={v!r} does not apply to {self.factory!r}: "
                                 f"{str(e).strip().splitlines()[0]}") from None
        self.search_params.update(params)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (ids [B, n], scores [B, n]); missing results (n > size) have id -1."""
        q = self._prep(queries)
        scores, pos = self.index.search(q, n)
        ids = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)
        if self.metric == "l2":
            scores = -scores
        return ids, scores

    def query(self, vector: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """One query vector [D] (or interests [K, D], merged by best score) -> (ids [n], scores [n])."""
        v = np.asarray(vector, dtype=np.float32)
        if v.ndim == 2:
            return merge_interests(*self.search(v, n), n)
        ids, scores = self.search(v[None, :], n)
        return ids[0], scores[0]

    def __len__(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    # ---- persistence --------------------------------------------------
    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, ids: np.ndarray, factory: str, metric: str) -> "VectorIndex":
        self = cls(factory=factory, metric=metric)
        self.index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        self.ids = ids
        return self

    def save(self, run: RunDir, **info) -> None:
        """Into <run>/index/ (with `info` in its meta.json)."""
        run.write_index(IndexFiles(self.to_bytes(), self.ids, self.factory, self.metric, dict(self.search_params)), **info)

    @classmethod
    def load(cls, run: RunDir) -> "VectorIndex":
        files = run.read_index()
        index = cls.from_bytes(files.data, files.ids, files.factory, files.metric)
        if files.search_params:
            index.set_search_params(**files.search_params)
        return index


def merge_interests(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-interest results [K, m] -> best score per distinct id, top n: (ids [n], scores [n])."""
    flat_ids, flat_scores = ids.reshape(-1), scores.reshape(-1)
    order = np.argsort(-flat_scores, kind="stable")
    flat_ids, flat_scores = flat_ids[order], flat_scores[order]
    valid = flat_ids >= 0
    flat_ids, flat_scores = flat_ids[valid], flat_scores[valid]
    _, first = np.unique(flat_ids, return_index=True)
    first = np.sort(first)[:n]
    return flat_ids[first], flat_scores[first]


def ann_recall(ann: VectorIndex, exact: VectorIndex, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the approximate index also returns."""
    q = queries.reshape(-1, queries.shape[-1])
    a, _ = ann.search(q, k)
    e, _ = exact.search(q, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, e)]))
