"""GRU4Rec (Hidasi et al., 2016): a GRU reads the history; its state after the last real item is the user."""

from __future__ import annotations

import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.schema import DataSchema
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import Dropout, item_table, length_mask
from ray_recall.models.registry import register_model


@register_model("gru4rec")
class GRU4Rec(RecallModel):
    """Item embeddings -> GRU -> Linear -> D, the state at every position.

    The item table (size D) is shared by the input and the output side. Causal: trained on every position of a
    window at once; the user is the state after the last item.

    Args:
        hidden_size: GRU state size.
        num_layers: stacked GRU layers.
        dropout_rate: dropout on the input embeddings and between GRU layers.
        normalize: L2-normalize both sides (cosine scores; pair with a temperature).

    Shapes:
        encode_sequence: HIST [B, L], HIST_LEN [B] -> [B, L, D] (USER is not used)
        encode_user: -> [B, D], the state at HIST_LEN - 1 (0 for an empty history)
        encode_item: ITEM [...] -> [..., D]
    """

    causal = True


    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, hidden_size: int = 64, num_layers: int = 1,
                 dropout_rate: float = 0.1, normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"gru4rec needs hidden_size > 0 and num_layers > 0, got {hidden_size} and {num_layers}")
        self.item_emb = item_table(schema.num_items, embedding_dim)
        self.emb_dropout = Dropout(dropout_rate)
        self.gru = nn.GRU(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout_rate if num_layers > 1 else 0.0)
        self.proj = nn.Linear(hidden_size, embedding_dim)

    def encode_sequence(self, batch):
        hist, hist_len = batch[B.HIST], batch[B.HIST_LEN]
        L = hist.shape[1]
        mask = length_mask(hist_len, L)  # [B, L]
        # Zeroing padded inputs makes the ids stored there irrelevant; the GRU is causal, so the states
        # at real positions never see them anyway.
        x = self.emb_dropout(self.item_emb(hist) * mask.unsqueeze(-1))  # [B, L, D]
        out, _ = self.gru(x)  # [B, L, H]
        return self.output(self.proj(out))  # [B, L, D]

    def encode_item(self, batch):
        return self.output(self.item_emb(batch[B.ITEM]))  # [..., D]
