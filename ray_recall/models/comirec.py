"""ComiRec-SA (Cen et al., 2020): K interests from multi-head self-attentive pooling of the history."""

from __future__ import annotations

import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.schema import DataSchema
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import causal_attention_mask, item_table, length_mask, position_embedding
from ray_recall.models.registry import register_model


@register_model("comirec")
class ComiRecSA(RecallModel):
    """A = softmax_L(W2 tanh(W1 H^T)) over real positions; interests = A E -> [B, K, D].

    H is the history's item embeddings E plus (optionally) learned position embeddings; the
    attention reads H, the interests pool E, as in the paper's code. The item table (size D) is
    shared by both sides.

    Args:
        num_interests: K, attention heads = interests per user.
        hidden_size: d_a, width of W1 (0 = 4 * embedding_dim, the paper's choice).
        use_positional: add learned position embeddings before computing the attention.
        attention_power: p of label-aware attention in training, softmax(p * <interest, target>). The
            paper picks the best interest (p -> inf); with normalized vectors a soft p generalizes
            better when a user's history is mostly one taste.
        normalize: L2-normalize interests and items (cosine scores; pair with a temperature).

    Causal in the sense all-position training needs: the interests after position t pool items 0..t only,
    their logits read each item and its position from the window's start; so every position of a window
    is trained in one pass (`encode_sequence`), each scored with label-aware attention against its own
    next item.

    Shapes:
        encode_user: HIST [B, L], HIST_LEN [B] -> [B, K, D] (USER is not used; L <= the schema's max_len)
        encode_sequence: -> [B, L, K, D], the interests after each position
        encode_item: ITEM [...] -> [..., D]
    """

    multi_interest = True
    causal = True  # interests at a position pool only the items up to it: all-position training applies
    packable = True  # reads HIST_SEG and HIST_POS: several windows may share a row

    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, num_interests: int = 4, hidden_size: int = 0,
                 use_positional: bool = True, attention_power: float = 1.0, normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        if num_interests < 1:
            raise ValueError(f"comirec needs num_interests >= 1, got {num_interests}")
        self.num_interests = num_interests
        self.attention_power = attention_power
        self.item_emb = item_table(schema.num_items, embedding_dim)
        self.pos_emb = nn.Embedding(schema.max_len, embedding_dim) if use_positional else None
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=embedding_dim ** -0.5)
        d_a = hidden_size or 4 * embedding_dim
        self.w1 = nn.Linear(embedding_dim, d_a, bias=False)
        self.w2 = nn.Linear(d_a, num_interests, bias=False)

    def encode_user(self, batch):
        e, mask, scores = self._scores(batch)  # [B, L, D], [B, L], [B, K, L]
        return self._pool(e, scores, mask[:, None, :])  # [B, K, D]

    def encode_sequence(self, batch):
        """[B, L, K, D]: the interests after each position, each pooling only the items up to it.

        A position's attention logits depend on its own item and position alone (positions count from the
        window's start), so the interests of every prefix come from one pass: the same logits under a causal
        mask, [B, L, K, L]. Row t equals `encode_user` of the window cut after position t. Packed rows
        (HIST_SEG, HIST_POS) pool within each window, positions counted from its own start.
        """
        e, mask, scores = self._scores(batch)
        allowed = causal_attention_mask(batch, mask)[:, :, None, :]  # [B, L, 1, L]: j <= t, real, in t's window
        return self._pool(e[:, None], scores[:, None], allowed)  # [B, L, K, D]

    def _scores(self, batch):
        """(item embeddings [B, L, D] with padding zeroed, the real positions [B, L], attention logits [B, K, L])."""
        hist, hist_len = batch[B.HIST], batch[B.HIST_LEN]
        L = hist.shape[1]
        if L > self.max_len:
            raise ValueError(f"comirec: history length {L} exceeds the schema's max_len {self.max_len}")
        mask = length_mask(hist_len, L)  # [B, L]
        e = self.item_emb(hist) * mask.unsqueeze(-1)  # [B, L, D]; padding zeroed so its ids never matter
        h = e + position_embedding(self.pos_emb.weight, batch, L) if self.pos_emb is not None else e
        return e, mask, self.w2(torch.tanh(self.w1(h))).transpose(1, 2)

    def _pool(self, e: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The interests: softmax of `scores` [..., K, L] over the `allowed` items (bool, broadcast to it) pooling
        `e` [..., L, D] -> [..., K, D]. The most negative finite value (not -inf) keeps a row with nothing allowed
        (an empty history) finite; its weights are then zeroed."""
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1) * allowed.to(scores.dtype)
        return self.output(attn @ e)

    def encode_item(self, batch):
        return self.output(self.item_emb(batch[B.ITEM]))  # [..., D]
