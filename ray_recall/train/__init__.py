"""Training: the per-worker loop (plain torch), the Ray Train wrapper, and `MatchTrainer`, its notebook face.

`MatchTrainer` is loaded on first use, so workers importing `ray_recall.train.<module>` pay nothing for it.
"""

__all__ = ["MatchTrainer"]


def __getattr__(name: str):
    if name == "MatchTrainer":
        from ray_recall.train.match_trainer import MatchTrainer

        return MatchTrainer
    raise AttributeError(f"module 'ray_recall.train' has no attribute {name!r}")
