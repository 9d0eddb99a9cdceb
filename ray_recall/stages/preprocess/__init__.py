"""The data stage: sources, vocabularies, sequences and splits, on Ray Data or in the driver for small logs."""

from ray_recall.stages.preprocess.stage import preprocess

__all__ = ["preprocess"]
