"""DSSM two-tower: a user tower over user features (and optionally the pooled history) and an item tower over item features."""

from __future__ import annotations

import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.schema import DataSchema
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import FeatureEmbedding, length_mask, masked_mean, mlp
from ray_recall.models.registry import register_model


@register_model("dssm")
class DSSM(RecallModel):
    """Two towers: MLP(user id, user features[, mean history]) and MLP(item id, item features).

    Args:
        user_features / item_features: attribute names to use (None = all in the data).
        feature_dim: embedding size of every id and attribute.
        hidden_units, dropout_rates, activation: the towers' MLPs.
        use_history: add the mean of the history's item-id embeddings to the user tower.
        normalize: L2-normalize both towers' outputs (cosine scores; pair with a temperature).
    """

    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, user_features: list[str] | None = None,
                 item_features: list[str] | None = None, feature_dim: int = 32, hidden_units: tuple[int, ...] = (256, 128),
                 dropout_rates: tuple[float, ...] | float = 0.0, activation: str = "relu", use_user_id: bool = True,
                 use_history: bool = True, normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        self.use_user_id = use_user_id
        self.use_history = use_history
        self.user_id_emb = nn.Embedding(schema.num_users + 1, feature_dim, padding_idx=0) if use_user_id else None
        self.item_id_emb = nn.Embedding(schema.num_items + 1, feature_dim, padding_idx=0)
        self.user_feats = FeatureEmbedding(schema, "user", list(schema.user_features) if user_features is None else user_features, feature_dim)
        self.item_feats = FeatureEmbedding(schema, "item", list(schema.item_features) if item_features is None else item_features, feature_dim)
        user_in = feature_dim * (int(use_user_id) + int(use_history)) + self.user_feats.out_dim
        if user_in == 0:
            raise ValueError("DSSM user tower has no input: enable use_user_id, use_history or give user_features")
        item_in = feature_dim + self.item_feats.out_dim
        self.user_tower = mlp(user_in, list(hidden_units), embedding_dim, dropout_rates, activation)
        self.item_tower = mlp(item_in, list(hidden_units), embedding_dim, dropout_rates, activation)

    def encode_user(self, batch):
        user = batch[B.USER]
        parts = []
        if self.use_user_id:
            parts.append(self.user_id_emb(user))
        if self.use_history:
            hist = batch[B.HIST]
            parts.append(masked_mean(self.item_id_emb(hist), length_mask(batch[B.HIST_LEN], hist.shape[1])))
        parts.append(self.user_feats(user))
        return self.output(self.user_tower(torch.cat(parts, dim=-1)))  # [B, D]

    def encode_item(self, batch):
        item = batch[B.ITEM]
        return self.output(self.item_tower(torch.cat([self.item_id_emb(item), self.item_feats(item)], dim=-1)))  # [..., D]
