"""MIND (Li et al., 2019): multi-interest extraction by behaviour-to-interest (B2I) dynamic routing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ray_recall import batch as B
from ray_recall.schema import DataSchema
from ray_recall.models.base import RecallModel
from ray_recall.models.layers import item_table, label_aware_attention, length_mask, mlp
from ray_recall.models.registry import register_model


def squash(z: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule non-linearity: z [..., D] -> |z|^2 / (1 + |z|^2) * z / |z| (short vectors shrink towards 0)."""
    sq = z.pow(2).sum(-1, keepdim=True)
    return z * (sq / (1.0 + sq)) / (sq + eps).sqrt()


def dynamic_interest_count(hist_len: torch.Tensor, num_interests: int) -> torch.Tensor:
    """[B] history lengths -> [B] K_u = max(1, min(K, floor(log2(hist_len)))).

    Counted in integers (floor(log2(n)) >= j  <=>  n >= 2^j), so powers of two are exact.
    """
    powers = 2 ** torch.arange(1, num_interests + 1, device=hist_len.device)  # [K]
    return (hist_len[:, None] >= powers[None, :]).sum(-1).clamp(min=1)


@register_model("mind")
class MIND(RecallModel):
    """History -> K interest capsules (B2I routing through a shared bilinear map S) -> ReLU layer -> [B, K, D].

    Routing logits b [B, K, L] start random (normal) at every training forward, as in the paper, and from
    a fixed draw stored with the model in eval mode, so `encode_user` is deterministic at serving time.
    Padded positions (>= HIST_LEN) route nowhere. The item table (size D) is shared by both sides.

    Args:
        num_interests: K, interest capsules per user.
        routing_iterations: B2I routing iterations (>= 1).
        hidden_size: width of the ReLU layer that maps each capsule to the item space (0 = capsules as they are).
        dynamic_interests: use K_u = max(1, min(K, floor(log2(HIST_LEN)))) interests per user; the
            others are replaced by a copy of the first interest (so best-score retrieval is unchanged)
            and are left out of label-aware attention in training.
        attention_power: p of label-aware attention, softmax(p * <interest, target>); large p ~ hard choice.
        routing_init_std: standard deviation of the initial routing logits.
        normalize: L2-normalize interests and items (cosine scores; pair with a temperature).

    Shapes:
        encode_user: HIST [B, L], HIST_LEN [B] -> [B, K, D] (USER is not used; L <= the schema's max_len)
        encode_item: ITEM [...] -> [..., D]
    """

    multi_interest = True
    sparse_safe = False  # `behaviours` may map the item table's weight directly

    def __init__(self, schema: DataSchema, embedding_dim: int = 64, *, num_interests: int = 4, routing_iterations: int = 3,
                 hidden_size: int = 0, dynamic_interests: bool = False, attention_power: float = 2.0,
                 routing_init_std: float = 1.0, normalize: bool = True):
        super().__init__(schema, embedding_dim, normalize)
        if num_interests < 1 or routing_iterations < 1:
            raise ValueError(f"mind needs num_interests >= 1 and routing_iterations >= 1, "
                             f"got {num_interests} and {routing_iterations}")
        self.num_interests = num_interests
        self.routing_iterations = routing_iterations
        self.dynamic_interests = dynamic_interests
        self.attention_power = attention_power
        self.routing_init_std = routing_init_std
        self.item_emb = item_table(schema.num_items, embedding_dim)
        self.bilinear = nn.Linear(embedding_dim, embedding_dim, bias=False)  # S, shared by every (behaviour, interest) pair
        self.out = mlp(embedding_dim, [hidden_size], embedding_dim) if hidden_size > 0 else nn.Identity()
        self.register_buffer("eval_routing_logits", torch.randn(num_interests, schema.max_len) * routing_init_std)

    def interests(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """HIST [B, L], HIST_LEN [B] -> (interests [B, K, D], active [B, K] bool; all True unless dynamic_interests)."""
        hist, hist_len = batch[B.HIST], batch[B.HIST_LEN]
        n, L = hist.shape
        if L > self.max_len:
            raise ValueError(f"mind: history length {L} exceeds the schema's max_len {self.max_len}")
        K = self.num_interests
        real = length_mask(hist_len, L).to(self.item_emb.weight.dtype)[:, None, :]  # [B, 1, L]
        low = self.behaviours(hist)  # [B, L, D]
        if self.training:
            logits = torch.randn(n, K, L, device=hist.device, dtype=low.dtype) * self.routing_init_std
        else:
            logits = self.eval_routing_logits[:, :L].to(low.dtype).expand(n, -1, -1)
        if self.dynamic_interests:
            active = torch.arange(K, device=hist.device)[None, :] < dynamic_interest_count(hist_len, K)[:, None]  # [B, K]
            inactive = torch.zeros(n, K, 1, dtype=low.dtype, device=hist.device).masked_fill(~active[:, :, None], float("-inf"))
        else:
            active, inactive = torch.ones(n, K, dtype=torch.bool, device=hist.device), None
        # Only the last iteration passes gradients to S and the embeddings; the earlier ones only find
        # the routing weights, as in the reference implementations.
        low_fixed = low.detach()
        for it in range(self.routing_iterations):
            # [B, K, L]: each behaviour spreads over the active interests; padding routes nowhere.
            w = torch.softmax(logits if inactive is None else logits + inactive, dim=1) * real
            last = it == self.routing_iterations - 1
            caps = squash(torch.bmm(w, low if last else low_fixed))  # [B, K, D]
            if not last:
                logits = logits + torch.bmm(caps, low_fixed.transpose(1, 2))
        return self.output(self.out(caps)), active  # [B, K, D]

    def behaviours(self, hist: torch.Tensor) -> torch.Tensor:
        """HIST [B, L] -> S e_i [B, L, D]; 0 at padding (item 0, whose embedding is 0 and gets no gradient).

        With fewer items than history positions (MovieLens: 1.7k items, 6.4k positions in a batch of
        128) S maps the whole table once and the batch looks the result up: the same values, with S
        applied (and differentiated) on 1.7k rows instead of 6.4k.
        """
        if self.item_emb.num_embeddings <= hist.numel():
            return F.embedding(hist, self.bilinear(self.item_emb.weight), padding_idx=0)
        return self.bilinear(self.item_emb(hist))

    def encode_user(self, batch):
        interests, active = self.interests(batch)
        if self.dynamic_interests:
            interests = torch.where(active.unsqueeze(-1), interests, interests[:, :1].expand_as(interests))
        return interests  # [B, K, D]

    def encode_item(self, batch):
        return self.output(self.item_emb(batch[B.ITEM]))  # [..., D]

    def user_for_target(self, batch, target):
        """Label-aware attention over the active interests only (inactive ones are copies of the first)."""
        interests, active = self.interests(batch)
        return label_aware_attention(interests, target, self.attention_power, active)
