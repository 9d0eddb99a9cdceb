"""The model contract: `encode_user(batch)` and `encode_item(batch)`, nothing else.

Training, embedding, evaluation and serving call only these two methods (training through
`forward`, which runs both towers), so a new model is one file plus `@register_model`. Losses
never live in a model. A subclass writes its constructor as `(schema, embedding_dim, *, **params)`;
calling the class without data (`GRU4Rec(hidden_size=64)`) gives its `ModelSpec` instead, an
explicit name + hyperparameters that `ModelSpec.build(schema)` turns into the model.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ray_recall import batch as B
from ray_recall.config import MODES
from ray_recall.models.layers import gather_last, label_aware_attention
from ray_recall.models.registry import is_registered
from ray_recall.models.spec import ModelSpec
from ray_recall.schema import DataSchema


class _ModelType(type(nn.Module)):
    """Calling a model class without a schema returns its spec (see `ModelSpec.of`); with one, the model,
    which keeps the spec it was built from as `model.spec` (how configs and workers rebuild it)."""

    def __call__(cls, schema: DataSchema | None = None, *args, **kwargs):
        if schema is None:
            return ModelSpec.of(cls, *args, **kwargs)
        if not isinstance(schema, DataSchema):
            if not isinstance(getattr(schema, "schema", None), DataSchema):
                raise TypeError(f"{cls.__name__}'s first argument is the data (a DataSchema, or a SeqData), not "
                                f"{type(schema).__name__}; without data pass everything by keyword, e.g. "
                                f"{cls.__name__}(embedding_dim=...) for a spec")
            schema = schema.schema  # a SeqData
        model = super().__call__(schema, *args, **kwargs)
        model.spec = ModelSpec.of(cls, *args, **kwargs) if is_registered(cls) else None
        return model


class RecallModel(nn.Module, metaclass=_ModelType):
    """Base class of every recall model.

    Class attributes a subclass may set:
        multi_interest: `encode_user` returns [B, K, D] (one vector per interest) instead of [B, D].
        causal: the user state at each position depends only on the items up to it; the model then
            implements `encode_sequence` ([B, L, D], every position's state in one pass; multi-interest:
            [B, L, K, D]), which all-position training scores against every next item, and `encode_user` is its
            state after the last item.
        packable: a causal model that reads HIST_SEG and HIST_POS (ray_recall.batch), so that training may pack
            several windows into one row, each attending only to itself.
        modes: the training modes the model is meant for.
    """

    multi_interest: ClassVar[bool] = False
    causal: ClassVar[bool] = False
    packable: ClassVar[bool] = False
    sparse_safe: ClassVar[bool] = True  # every id table is used through its module call, so it may be sparse
    modes: ClassVar[tuple[str, ...]] = MODES
    registry_name: ClassVar[str]  # set by @register_model
    spec: ModelSpec | None  # what built this model (set on construction; None for an unregistered class)

    def __init__(self, schema: DataSchema, embedding_dim: int, normalize: bool = True):
        super().__init__()
        self.num_users, self.num_items, self.max_len = schema.num_users, schema.num_items, schema.max_len
        self.embedding_dim = embedding_dim
        self.normalize = normalize

    def encode_user(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """USER [B], HIST [B, L], HIST_LEN [B] -> [B, D] (multi-interest: [B, K, D])."""
        if self.causal:
            return gather_last(self.encode_sequence(batch), batch[B.HIST_LEN])
        raise NotImplementedError

    def encode_sequence(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Causal models: HIST [B, L], HIST_LEN [B] (HIST_TIME [B, L] if the model reads it) -> [B, L, D], the
        user state after each position (multi-interest: [B, L, K, D]; padding positions: anything, they are never
        scored)."""
        raise NotImplementedError(f"{type(self).__name__} is not causal: it has no per-position states")

    def encode_item(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """ITEM [...] -> [..., D]."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor], all_items: bool = False) -> dict[str, torch.Tensor]:
        """Both towers for a training batch (training calls this, so that DDP sees one forward).

        POS [E] (per prefix) or [E, L] (all positions), NEG [E, N] ->
            "user"  [E, T, D]  the user state scored at each target (T = 1 per prefix, L all positions)
            "pos"   [E, T, D]  the target items (padding targets, id 0: anything; never scored)
            "neg"   [E, N, D]  each row's negatives
            "items" [num_items, D] every item (row j = item j + 1), when `all_items` (the exact softmax)
        A multi-interest user is reduced to one vector per target against it (`combine_interests`).
        """
        pos_ids, neg_ids = batch[B.POS], batch[B.NEG]
        per_prefix = pos_ids.dim() == 1
        targets = pos_ids[:, None] if per_prefix else pos_ids  # [E, T]
        out = {}
        if all_items:
            table = self.encode_item({B.ITEM: self.all_item_ids(device=pos_ids.device)})
            out["items"] = table
            table = torch.cat([table.new_zeros(1, table.shape[-1]), table])  # row 0: padding
            pos, neg = table[targets], table[neg_ids]
        else:
            # Encode each distinct item once: the targets and negatives of a batch hold far fewer distinct items.
            unique, inverse = torch.unique(torch.cat([targets.reshape(-1), neg_ids.reshape(-1)]), return_inverse=True)
            # split, not two slices: its backward joins the two gradients, where slices' each fill a zero
            # copy of the whole [T + N, D] and add them (~4 ms of a 76 ms SASRec step; the same sums).
            # index_select, not [inverse]: its backward adds the rows (index_add_) where indexing's sorts them first.
            pos, neg = self.encode_item({B.ITEM: unique}).index_select(0, inverse).split([targets.numel(), neg_ids.numel()])
            pos, neg = pos.reshape(*targets.shape, -1), neg.reshape(*neg_ids.shape, -1)
        if per_prefix:
            out["user"] = self.user_for_target(batch, pos[:, 0])[:, None]
        else:
            states = self.encode_sequence(batch)  # [E, L, D], or a multi-interest model's [E, L, K, D]
            out["user"] = states if states.dim() == 3 else self.combine_interests(states, pos)
        out["pos"], out["neg"] = pos, neg
        return out

    def user_for_target(self, batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The user vector [B, D] that training scores against `target` [B, D]: `encode_user`, with a
        multi-interest user's interests combined by label-aware attention."""
        user = self.encode_user(batch)
        return user if user.dim() == 2 else self.combine_interests(user, target)

    def combine_interests(self, interests: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A multi-interest user's interests [..., K, D] -> one vector [..., D] against `target` [..., D]
        (label-aware attention)."""
        return label_aware_attention(interests, target, power=getattr(self, "attention_power", 1.0))

    def all_item_ids(self, device=None) -> torch.Tensor:
        """[num_items] every dense item id (1..num_items)."""
        return torch.arange(1, self.num_items + 1, device=device)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """A tower's last step: L2-normalized when the model scores by cosine (`normalize`), else as is."""
        return F.normalize(x, dim=-1) if self.normalize else x
