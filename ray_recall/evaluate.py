"""Public notebook API for evaluation by exact full ranking (defined in `ray_recall.notebook`)."""

from ray_recall.notebook import evaluate_hit_rate, evaluate_model, evaluate_mrr, evaluate_ndcg, evaluate_recall

__all__ = ["evaluate_hit_rate", "evaluate_model", "evaluate_mrr", "evaluate_ndcg", "evaluate_recall"]
