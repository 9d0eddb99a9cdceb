"""YouTubeDNN (Covington et al., 2016): pooled watch history + user attributes -> MLP; items are a softmax table."""

from __future__ import annotations

import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.schema import DataSchema
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import FeatureEmbedding, item_table, length_mask, masked_mean, mlp
from ray_recall.models.registry import register_model


@register_model("youtubednn")
class YouTubeDNN(RecallModel):
    """User tower: MLP(mean of history item embeddings, user attributes[, user id]) -> D; item side: id embedding of size D.

    Args:
        user_features: user attribute names fed to the tower (None = all in the data, [] = none).
        item_features: item attribute names whose embeddings are projected to D and added to the
            item id embedding (None = all in the data; the default [] = id only, as in the paper).
        feature_dim: embedding size of history items, the user id and every user attribute.
        hidden_units, dropout_rates, activation: the user tower's MLP.
        use_user_id: add a user id embedding to the tower input (memorizes users; no use for unseen ones).
        normalize: L2-normalize both sides (cosine scores; pair with a temperature).

    Shapes:
        encode_user: USER [B], HIST [B, L], HIST_LEN [B] -> [B, D]
        encode_item: ITEM [...] -> [..., D]
    """

    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, user_features: list[str] | None = None,
                 item_features: list[str] | tuple[str, ...] | None = (), feature_dim: int = 32,
                 hidden_units: tuple[int, ...] = (128,), dropout_rates: tuple[float, ...] | float = 0.0,
                 activation: str = "relu", use_user_id: bool = False, normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        self.use_user_id = use_user_id
        # The history's input embedding is separate from the output table, as in the paper: a watched
        # video as context and a video as a softmax class need not live in the same space.
        self.hist_emb = item_table(schema.num_items, feature_dim, std=embedding_dim ** -0.5)
        self.user_id_emb = nn.Embedding(schema.num_users + 1, feature_dim, padding_idx=0) if use_user_id else None
        user_names = list(schema.user_features) if user_features is None else list(user_features)
        self.user_feats = FeatureEmbedding(schema, "user", user_names, feature_dim)
        self.user_tower = mlp(feature_dim * (1 + int(use_user_id)) + self.user_feats.out_dim, list(hidden_units), embedding_dim,
                              dropout_rates, activation)
        self.item_emb = item_table(schema.num_items, embedding_dim)
        item_names = list(schema.item_features) if item_features is None else list(item_features)
        self.item_feats = FeatureEmbedding(schema, "item", item_names, feature_dim)
        self.item_feat_proj = nn.Linear(self.item_feats.out_dim, embedding_dim, bias=False) if self.item_feats.names else None

    def encode_user(self, batch):
        user, hist = batch[B.USER], batch[B.HIST]
        mask = length_mask(batch[B.HIST_LEN], hist.shape[1])  # [B, L]
        parts = [masked_mean(self.hist_emb(hist), mask)]  # [B, F]
        if self.use_user_id:
            parts.append(self.user_id_emb(user))
        parts.append(self.user_feats(user))
        return self.output(self.user_tower(torch.cat(parts, dim=-1)))  # [B, D]

    def encode_item(self, batch):
        item = batch[B.ITEM]
        out = self.item_emb(item)  # [..., D]
        if self.item_feat_proj is not None:
            out = out + self.item_feat_proj(self.item_feats(item))
        return self.output(out)
