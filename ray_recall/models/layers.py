"""Building blocks shared by the models: masks, pooling, MLPs, id and feature embeddings, label-aware attention."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_recall.batch import HIST_POS, HIST_SEG
from ray_recall.schema import DataSchema


def item_table(num_items: int, dim: int, std: float | None = None) -> nn.Embedding:
    """[num_items + 1, dim] id embeddings, N(0, std^2) init (std = dim^-0.5 by default); row 0 is padding: zero,
    and never updated."""
    emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
    nn.init.normal_(emb.weight, std=dim ** -0.5 if std is None else std)
    with torch.no_grad():
        emb.weight[0].zero_()
    return emb


def length_mask(hist_len: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, L] bool, True at real (non-padding) positions."""
    return torch.arange(max_len, device=hist_len.device)[None, :] < hist_len[:, None]


def causal_attention_mask(batch: dict, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, L] bool, True where position i may attend to position j: j <= i, j real (`mask` [B, L]), and in
    packed rows (HIST_SEG) j in i's own window. A packed row's padding attends to itself (never an empty row)."""
    L = mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    seg = batch.get(HIST_SEG)
    if seg is None:
        return causal[None] & mask[:, None, :]
    seg = seg[:, :L]
    return causal[None] & (seg[:, :, None] == seg[:, None, :])


def position_embedding(table: torch.Tensor, batch: dict, L: int) -> torch.Tensor:
    """A learned position table [max_len, D] -> [L, D] (positions 0..L-1), or [B, L, D] for packed rows, each
    position's index within its own window (HIST_POS)."""
    positions = batch.get(HIST_POS)
    if positions is None:
        return table[:L]
    positions = positions[:, :L]
    return table.index_select(0, positions.reshape(-1)).view(*positions.shape, table.shape[1])


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values [B, L, D], mask [B, L] -> [B, D]; rows with no real position give 0."""
    m = mask.unsqueeze(-1).to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp(min=1.0)


def gather_last(states: torch.Tensor, hist_len: torch.Tensor) -> torch.Tensor:
    """states [B, L, H], hist_len [B] -> the state at the last real position [B, H]; an empty history gives 0."""
    L = states.shape[1]
    last = (hist_len.clamp(min=1, max=L) - 1)[:, None, None].expand(-1, 1, states.shape[-1])
    return states.gather(1, last).squeeze(1) * (hist_len > 0).unsqueeze(-1).to(states.dtype)


def take_at(t: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """t [B, ...], index [B] -> each row's slice at index[b] along `dim`, that dim kept with size 1.

    A gather rather than advanced indexing, which ONNX export carries out with a warning about negative indices.
    """
    shape = list(t.shape)
    shape[dim] = 1
    return t.gather(dim, index.view(-1, *[1] * (t.dim() - 1)).expand(shape))


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, as `F.dropout`, with a mask drawn 16 bits at a time from torch's generator on CPU.

    `F.dropout` on CPU draws one Bernoulli per element, about 5 ns each: on a SASRec step it was 14% of the time.
    Here each element keeps a uniform 16-bit draw (four to a 64-bit integer) when it clears the threshold, so p is
    rounded to a multiple of 1/65536 and the kept values are scaled by 1 / (1 - that p): unbiased, and seeded by
    `torch.manual_seed` like everything else. On other devices `F.dropout` (a fused kernel there) is used.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    dropped = min(round(p * 65536), 65535)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None).view(torch.int16)[:n].view(x.shape)
    keep = (bits >= dropped - 32768).to(x.dtype).mul_(65536.0 / (65536 - dropped))
    return x * keep


class Dropout(nn.Module):
    """`nn.Dropout` with the faster CPU mask of `dropout`."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate {p} must be in [0, 1)")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def label_aware_attention(interests: torch.Tensor, target: torch.Tensor, power: float = 1.0,
                          active: torch.Tensor | None = None) -> torch.Tensor:
    """MIND's label-aware attention. interests [..., K, D], target [..., D] -> [..., D] (e.g. [B, K, D] per
    prefix, [B, L, K, D] at every position of a window).

    weights = softmax(power * <interest_k, target>) over the active interests (`active` [..., K] bool, all by
    default): power -> inf picks the best-matching interest (hard attention), power = 0 averages them.
    """
    logits = torch.einsum("...kd,...d->...k", interests, target) * power
    if active is not None:
        logits = logits.masked_fill(~active, float("-inf"))
    return torch.einsum("...k,...kd->...d", torch.softmax(logits, dim=-1), interests)


class FeatureEmbedding(nn.Module):
    """Looks up a side's (user or item) feature codes by dense id and embeds them.

    The per-id code tables are buffers, so a saved `state_dict` carries them and a loaded model
    needs nothing but ids. Multi-valued features are mean-pooled over their non-zero codes.
    Output: [..., len(names) * dim].
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
            layers.append(Dropout(p))
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)
