"""Recall models. Each is an `nn.Module` with `encode_user` and `encode_item`; see `base.RecallModel`."""

from ray_recall.models.base import RecallModel
from ray_recall.models.registry import available_models, get_model_class, register_model
from ray_recall.models.spec import ModelSpec, build_from_file, build_model, check_model_config, describe_trained, interests_of, load_trained
from ray_recall.models.comirec import ComiRecSA
from ray_recall.models.dssm import DSSM
from ray_recall.models.gru4rec import GRU4Rec
from ray_recall.models.hstu import HSTU
from ray_recall.models.mind import MIND
from ray_recall.models.sasrec import SASRec
from ray_recall.models.youtubednn import YouTubeDNN

__all__ = ["RecallModel", "ModelSpec", "ComiRecSA", "DSSM", "GRU4Rec", "HSTU", "MIND", "SASRec", "YouTubeDNN", "available_models",
           "build_from_file", "build_model", "check_model_config", "describe_trained", "get_model_class", "interests_of", "load_trained", "register_model"]
