"""Public notebook API for data: MovieLens, sequence features, negatives (defined in `ray_recall.notebook`)."""

from ray_recall.notebook import SeqData, SeqSplit, generate_seq_features, load_movielens, negative_sample

__all__ = ["SeqData", "SeqSplit", "generate_seq_features", "load_movielens", "negative_sample"]
