"""HSTU (Zhai et al., 2024, "Actions Speak Louder than Words"): hierarchical sequential transduction units.

A block replaces softmax attention by pointwise aggregated attention with SiLU and gates its output:

    u, v, q, k = split(SiLU(W_uvqk LN(x)))
    A          = SiLU(q k^T + rab_pos(i - j) + rab_time(t_i - t_j)) / L      (causal: j <= i, real items only)
    x          = x + W_o dropout(u * LN(A v))

The relative attention bias has a learned term per distance i - j and, where timestamps exist
(HIST_TIME), one per log-bucket of the time between the two items (buckets of log(|dt|) / 0.301, as
the reference implementation). Position i is biased by its own timestamp, never the next item's, so a
state uses nothing from after its position and training matches serving.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ray_recall import batch as B
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import (Dropout, causal_attention_mask, item_table, length_mask, position_embedding,
                                      take_at)
from ray_recall.models.registry import register_model
from ray_recall.schema import DataSchema


class _HSTUBlock(nn.Module):
    """x [B, L, D], allowed [B, 1, L, L] (True = may attend), bias [B, h, L, L] -> [B, L, D]."""

    def __init__(self, dim: int, heads: int, attention_dim: int, linear_dim: int, dropout_rate: float, max_len: int):
        super().__init__()
        self.heads, self.attention_dim, self.linear_dim = heads, attention_dim, linear_dim
        # The aggregated attention is divided by the longest history the model takes (the paper's n), a constant:
        # dividing by a batch's padded width would make a state depend on how far its row was padded.
        self.max_len = max_len
        self.ln_in = nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, heads * (2 * linear_dim + 2 * attention_dim))
        self.ln_attn = nn.LayerNorm(heads * linear_dim)
        self.out = nn.Linear(heads * linear_dim, dim)
        self.dropout = Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, bias: torch.Tensor,
                last: torch.Tensor | None = None) -> torch.Tensor:
        """last [B] (optional): compute only the state at this position of each row -> [B, 1, D] (it still
        aggregates every position up to it): a user's vector needs nothing else from the last block."""
        b, L, _ = x.shape
        h, da, dl = self.heads, self.attention_dim, self.linear_dim
        u, v, q, k = F.silu(self.uvqk(self.ln_in(x))).split([h * dl, h * dl, h * da, h * da], dim=-1)
        if last is not None:
            x, u, q = take_at(x, last, 1), take_at(u, last, 1), take_at(q, last, 1)  # [B, 1, .]
            allowed = take_at(allowed, last, 2)  # [B, 1, 1, L]
            bias = take_at(bias.expand(b, -1, -1, -1), last, 2)  # [B, h, 1, L]
        Lq = q.shape[1]
        q = q.reshape(b, Lq, h, da).transpose(1, 2)  # [B, h, Lq, da]
        k = k.reshape(b, L, h, da).transpose(1, 2)  # [B, h, L, da]
        v = v.reshape(b, L, h, dl).transpose(1, 2)  # [B, h, L, dl]
        attn = F.silu(q @ k.transpose(-1, -2) + bias) / self.max_len  # [B, h, Lq, L]
        attn = attn * allowed
        av = (attn @ v).transpose(1, 2).reshape(b, Lq, h * dl)
        return x + self.out(self.dropout(u * self.ln_attn(av)))


@register_model("hstu")
class HSTU(RecallModel):
    """Item embeddings (x sqrt(D)) + learned positions -> HSTU blocks -> the state at every position.

    The item table (size D) is shared by the input and the output side. Causal: trained on every
    position of a window at once; the user is the state after the last item.

    Args:
        num_blocks: HSTU blocks.
        num_heads: attention heads.
        attention_dim: query/key width per head (0 = embedding_dim // num_heads).
        linear_dim: value/gate width per head (0 = embedding_dim // num_heads).
        dropout_rate: dropout on the input embeddings and on each block's output.
        time_buckets: log-spaced buckets of the time between two items (0 = no time bias).
        normalize: L2-normalize both sides (cosine scores; pair with a temperature).

    Shapes:
        encode_sequence: HIST [B, L], HIST_LEN [B], HIST_TIME [B, L] (optional) -> [B, L, D]
        encode_user: -> [B, D], the state at HIST_LEN - 1
        encode_item: ITEM [...] -> [..., D]
    """

    causal = True
    packable = True
    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, num_blocks: int = 2, num_heads: int = 1,
                 attention_dim: int = 0, linear_dim: int = 0, dropout_rate: float = 0.2, time_buckets: int = 64,
                 normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        if num_blocks < 1 or num_heads < 1 or time_buckets < 0:
            raise ValueError(f"hstu needs num_blocks >= 1, num_heads >= 1 and time_buckets >= 0, got {num_blocks}, "
                             f"{num_heads} and {time_buckets}")
        attention_dim = attention_dim or max(1, embedding_dim // num_heads)
        linear_dim = linear_dim or max(1, embedding_dim // num_heads)
        self.num_heads, self.time_buckets = num_heads, time_buckets
        self.item_emb = item_table(schema.num_items, embedding_dim)
        self.pos_emb = nn.Embedding(schema.max_len, embedding_dim)
        nn.init.normal_(self.pos_emb.weight, std=embedding_dim ** -0.5)
        self.emb_dropout = Dropout(dropout_rate)
        self.blocks = nn.ModuleList(_HSTUBlock(embedding_dim, num_heads, attention_dim, linear_dim, dropout_rate,
                                               schema.max_len)
                                    for _ in range(num_blocks))
        # Relative attention bias, shared by the blocks as in the reference implementation.
        self.rel_pos = nn.Embedding(schema.max_len, num_heads)  # by distance i - j (>= 0 under the causal mask)
        self.rel_time = nn.Embedding(time_buckets + 1, num_heads) if time_buckets else None
        for emb in (self.rel_pos, self.rel_time):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        self.ln_out = nn.LayerNorm(embedding_dim)

    def _bias(self, batch, L: int) -> torch.Tensor:
        """[B or 1, h, L, L] relative attention bias by distance and (where HIST_TIME is given) elapsed time."""
        idx = torch.arange(L, device=batch[B.HIST].device)
        dist = (idx[:, None] - idx[None, :]).clamp(min=0)  # [L, L]; j > i is masked anyway
        bias = self.rel_pos(dist).permute(2, 0, 1)[None]  # [1, h, L, L]
        times = batch.get(B.HIST_TIME)
        if self.rel_time is not None and times is not None:
            dt = (times[:, :, None] - times[:, None, :]).abs().clamp(min=1.0)  # [B, L, L] seconds
            bucket = (torch.log(dt) / 0.301).long().clamp(0, self.time_buckets)
            # Selecting rows of the weight, not calling the module: the backward is then one index_add_ of the
            # [B, L, L] gradients, where the embedding's backward adds them one lookup at a time (~7 ms a step,
            # 9% of HSTU's) and indexing's sorts them first.
            table = self.rel_time.weight
            bias = bias + table.index_select(0, bucket.reshape(-1)).view(*bucket.shape, -1).permute(0, 3, 1, 2)
        return bias

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
            raise ValueError(f"hstu: history length {L} exceeds the positional table ({self.max_len} = the schema's max_len)")
        mask = length_mask(hist_len, L)  # [B, L]
        x = self.item_emb(hist) * math.sqrt(self.embedding_dim) + position_embedding(self.pos_emb.weight, batch, L)
        x = self.emb_dropout(x * mask.unsqueeze(-1))
        allowed = causal_attention_mask(batch, mask).unsqueeze(1).to(x.dtype)  # [B, 1, L, L]
        bias = self._bias(batch, L).to(x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, allowed, bias, last if i == len(self.blocks) - 1 else None)
        return self.output(self.ln_out(x))  # [B, L, D] or [B, 1, D]

    def encode_item(self, batch):
        return self.output(self.item_emb(batch[B.ITEM]))  # [..., D]
