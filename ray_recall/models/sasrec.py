"""SASRec (Kang & McAuley, 2018): causal self-attention over the history; the output at the last real item is the user."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ray_recall import batch as B
from ray_recall.schema import DataSchema
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import (Dropout, causal_attention_mask, dropout, item_table, length_mask,
                                      position_embedding, take_at)
from ray_recall.models.registry import register_model


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                           p: float) -> torch.Tensor:
    """Scaled dot-product attention as SDPA's math path computes it, its weights dropped by `layers.dropout`.

    q [B, h, Lq, d], k and v [B, h, L, d], allowed [B, 1, Lq, L] (True = may attend) -> [B, h, Lq, d]. On CPU
    SDPA draws its dropout mask one Bernoulli at a time; this is the CPU training path, SDPA the others.
    """
    w = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [B, h, Lq, L]
    w = torch.softmax(w.masked_fill(~allowed, float("-inf")), dim=-1)
    return dropout(w, p) @ v


class _CausalBlock(nn.Module):
    """Pre-LayerNorm transformer block: x [B, L, D], allowed [B, 1, L, L] (True = may attend) -> [B, L, D]."""

    def __init__(self, dim: int, num_heads: int, dropout_rate: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout_rate = dropout_rate
        self.ln_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), Dropout(dropout_rate), nn.Linear(dim, dim))
        self.dropout = Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """last [B] (optional): compute only the state at this position of each row -> [B, 1, D] (its keys are
        still every position): a user's vector needs nothing else from the last block."""
        b, L, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(d, dim=-1)
        if last is not None:
            x, q, allowed = take_at(x, last, 1), take_at(q, last, 1), take_at(allowed, last, 2)  # [B, 1, .]; [B, 1, 1, L]
        Lq, h = q.shape[1], self.num_heads
        q = q.reshape(b, Lq, h, d // h).transpose(1, 2)  # [B, h, Lq, d/h]
        k, v = (t.reshape(b, L, h, d // h).transpose(1, 2) for t in (k, v))  # [B, h, L, d/h]
        p = self.dropout_rate if self.training else 0.0
        if p > 0 and x.device.type == "cpu":
            a = attention_with_dropout(q, k, v, allowed, p)
        else:  # inference, or a GPU's fused kernels (their dropout included)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        x = x + self.dropout(self.attn_out(a.transpose(1, 2).reshape(b, Lq, d)))
        return x + self.dropout(self.ffn(self.ln_ffn(x)))


@register_model("sasrec")
class SASRec(RecallModel):
    """(item + learned position) embeddings -> causal transformer blocks -> the state at every position.

    The item table (size D) is shared by the input and the output side, as in the paper. Causal: trained
    on every position of a window at once; the user is the state after the last item.

    Args:
        num_blocks: transformer blocks.
        num_heads: attention heads (must divide embedding_dim).
        dropout_rate: dropout on embeddings, attention weights and residual branches.
        normalize: L2-normalize both sides (cosine scores; pair with a temperature).

    Shapes:
        encode_sequence: HIST [B, L], HIST_LEN [B] -> [B, L, D] (USER is not used; L <= the schema's max_len)
        encode_user: -> [B, D], the state at HIST_LEN - 1
        encode_item: ITEM [...] -> [..., D]
    """

    causal = True
    packable = True

    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, num_blocks: int = 2, num_heads: int = 1,
                 dropout_rate: float = 0.2, normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        if num_heads <= 0 or embedding_dim % num_heads:
            raise ValueError(f"sasrec: num_heads={num_heads} must be positive and divide embedding_dim={embedding_dim}")
        self.item_emb = item_table(schema.num_items, embedding_dim)
        self.pos_emb = nn.Embedding(schema.max_len, embedding_dim)
        nn.init.normal_(self.pos_emb.weight, std=embedding_dim ** -0.5)
        self.emb_dropout = Dropout(dropout_rate)
        self.blocks = nn.ModuleList(_CausalBlock(embedding_dim, num_heads, dropout_rate) for _ in range(num_blocks))
        self.ln_out = nn.LayerNorm(embedding_dim)

    def encode_sequence(self, batch):
        return self._states(batch)

    def encode_user(self, batch):
        """The state at HIST_LEN - 1 (0 for an empty history), the last block computed at that position only."""
        hist_len = batch[B.HIST_LEN]
        last = hist_len.clamp(min=1, max=batch[B.HIST].shape[1]) - 1
        user = self._states(batch, last)[:, 0]
        return user * (hist_len > 0).unsqueeze(-1).to(user.dtype)

    def _states(self, batch, last: torch.Tensor | None = None):
        """[B, L, D] the state at every position; with `last` [B], [B, 1, D] the state at that position."""
        hist, hist_len = batch[B.HIST], batch[B.HIST_LEN]
        L = hist.shape[1]
        if L > self.max_len:
            raise ValueError(f"sasrec: history length {L} exceeds the positional table ({self.max_len} = the schema's max_len)")
        mask = length_mask(hist_len, L)  # [B, L]
        # Padded inputs are zeroed so the ids stored there cannot reach any output.
        x = (self.item_emb(hist) + position_embedding(self.pos_emb.weight, batch, L)) * mask.unsqueeze(-1)  # [B, L, D]
        x = self.emb_dropout(x)
        # Key 0 always stays visible so a query never has an empty row (softmax of nothing is NaN);
        # for real queries it is a real item, for an empty history the result is never used.
        keys = mask | (torch.arange(L, device=hist.device) == 0)
        allowed = causal_attention_mask(batch, keys).unsqueeze(1)  # [B, 1, L, L]
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, last if i == len(self.blocks) - 1 else None)
        return self.output(self.ln_out(x))  # [B, L, D] or [B, 1, D]

    def encode_item(self, batch):
        return self.output(self.item_emb(batch[B.ITEM]))  # [..., D]
