"""The train stage: Ray Train `TorchTrainer` over the training samples (DDP); the best epoch becomes <run>/model/."""

from ray_recall.stages.train.stage import checkpoint_name, train

__all__ = ["checkpoint_name", "train"]
