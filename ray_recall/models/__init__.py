"""Recall models. Each is an `nn.Module` with `encode_user` and `encode_item`; see `base.RecallModel`."""

from ray_recall.models.registry import available_models, build_model, get_model_class, register_model
from ray_recall.models.base import RecallModel
from ray_recall.models.dssm import DSSM

__all__ = ["RecallModel", "DSSM", "available_models", "build_model", "get_model_class", "register_model"]
