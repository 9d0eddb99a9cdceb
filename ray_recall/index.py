"""Public API for retrieval: `VectorIndex`, a FAISS index that answers in the caller's ids (defined in `ray_recall.retrieval`)."""

from ray_recall.retrieval import VectorIndex, ann_recall, merge_interests

__all__ = ["VectorIndex", "ann_recall", "merge_interests"]
