"""The model contract: `encode_user(batch)` and `encode_item(batch)`, nothing else.

Training, embedding, evaluation and serving call only these two methods, so a
new model is one file plus `@register_model`. Losses never live in a model.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.config import MODES
from ray_recall.data.schema import DataSchema


class RecallModel(nn.Module):
    """Base class of every recall model.

    Subclasses set `multi_interest = True` when `encode_user` returns [B, K, D]
    (one vector per interest) instead of [B, D].
    """

    multi_interest: ClassVar[bool] = False
    modes: ClassVar[tuple[str, ...]] = MODES  # training modes the model is meant for

    def __init__(self, schema: DataSchema, embedding_dim: int):
        super().__init__()
        self.num_users = schema.num_users
        self.num_items = schema.num_items
        self.max_len = schema.max_len
        self.embedding_dim = embedding_dim

    def encode_user(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """USER [B], HIST [B, L], HIST_LEN [B] -> [B, D] (multi-interest: [B, K, D])."""
        raise NotImplementedError

    def encode_item(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """ITEM [...] -> [..., D]."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both towers for a training batch: (user [B, D], pos [B, D], neg [B, N, D]).

        Training calls this (so DDP sees one forward); multi-interest users are reduced
        to one vector per row by `select_interest` against the positive.
        """
        pos_ids, neg_ids = batch[B.POS], batch[B.NEG]
        # Encode each distinct item once: B * (1 + N) draws usually hold far fewer distinct items.
        unique, inverse = torch.unique(torch.cat([pos_ids, neg_ids.reshape(-1)]), return_inverse=True)
        items = self.encode_item({B.ITEM: unique})[inverse]
        pos = items[: len(pos_ids)]
        neg = items[len(pos_ids):].reshape(*neg_ids.shape, -1)
        return self.select_interest(self.encode_user(batch), pos), pos, neg

    def select_interest(self, user_emb: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
        """Reduce [B, K, D] interests to [B, D] given the target [B, D] (label-aware attention).

        Single-interest models return `user_emb` unchanged.
        """
        if user_emb.dim() == 2:
            return user_emb
        return label_aware_attention(user_emb, target_emb, power=getattr(self, "attention_power", 1.0))

    def all_item_ids(self, device=None) -> torch.Tensor:
        """[num_items] every dense item id (1..num_items)."""
        return torch.arange(1, self.num_items + 1, device=device)


def label_aware_attention(interests: torch.Tensor, target: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """MIND's label-aware attention. interests [B, K, D], target [B, D] -> [B, D].

    weights = softmax(power * <interest_k, target>): power -> inf picks the
    best-matching interest (hard attention), power = 0 averages them.
    """
    logits = torch.einsum("bkd,bd->bk", interests, target) * power
    weights = torch.softmax(logits, dim=-1)
    return torch.einsum("bk,bkd->bd", weights, interests)


def length_mask(hist_len: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, L] bool, True at real (non-padding) positions."""
    return torch.arange(max_len, device=hist_len.device)[None, :] < hist_len[:, None]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values [B, L, D], mask [B, L] -> [B, D]; rows with no real position give 0."""
    m = mask.unsqueeze(-1).to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1.0)


class FeatureEmbedding(nn.Module):
    """Looks up a side's (user or item) feature codes by dense id and embeds them.

    The per-id code tables are buffers, so a saved `state_dict` carries them
    and a loaded model needs nothing but ids. Multi-valued features are
    mean-pooled over their non-zero codes. Output: [..., len(names) * dim].
    """

    def __init__(self, schema: DataSchema, side: str, names: list[str], dim: int):
        super().__init__()
        tables = schema.user_features if side == "user" else schema.item_features
        missing = [n for n in names if n not in tables]
        if missing:
            raise ValueError(f"{side} feature(s) {missing} not in the data; available: {sorted(tables)}")
        self.names = list(names)
        self.dim = dim
        self.embeddings = nn.ModuleDict()
        for n in self.names:
            self.register_buffer(f"codes_{n}", torch.as_tensor(np.asarray(tables[n]), dtype=torch.long), persistent=True)
            self.embeddings[n] = nn.Embedding(schema.feature_vocab_size(n), dim, padding_idx=0)

    @property
    def out_dim(self) -> int:
        return len(self.names) * self.dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outs = []
        for n in self.names:
            codes = getattr(self, f"codes_{n}")[ids]
            emb = self.embeddings[n](codes)
            if codes.dim() > ids.dim():  # multi-valued: [..., M] codes -> mean over non-zero
                mask = (codes > 0).unsqueeze(-1).to(emb.dtype)
                emb = (emb * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
            outs.append(emb)
        if not outs:
            return ids.new_zeros(ids.shape + (0,), dtype=torch.float32)
        return torch.cat(outs, dim=-1)


def mlp(in_dim: int, hidden_units: list[int], out_dim: int, dropout_rates: list[float] | float = 0.0,
        activation: str = "relu") -> nn.Sequential:
    """Linear -> activation -> dropout per hidden layer, then a final Linear to out_dim."""
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "prelu": nn.PReLU, "sigmoid": nn.Sigmoid}
    if activation not in acts:
        raise ValueError(f"activation={activation!r} is unknown; choose one of {sorted(acts)}")
    if isinstance(dropout_rates, (int, float)):
        dropout_rates = [float(dropout_rates)] * len(hidden_units)
    if len(dropout_rates) != len(hidden_units):
        raise ValueError(f"dropout_rates has {len(dropout_rates)} entries but hidden_units has {len(hidden_units)}")
    layers: list[nn.Module] = []
    d = in_dim
    for h, p in zip(hidden_units, dropout_rates):
        layers += [nn.Linear(d, h), acts[activation]()]
        if p > 0:
            layers.append(nn.Dropout(p))
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def user_keys(batch: dict) -> dict:
    """The user-side part of a batch."""
    return {k: batch[k] for k in B.USER_KEYS if k in batch}
