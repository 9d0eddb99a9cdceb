"""Public notebook API for training: `MatchTrainer` (defined in `ray_recall.notebook`)."""

from ray_recall.notebook import MatchTrainer

__all__ = ["MatchTrainer"]
