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
from ray_recall.models.layers import label_aware_attention
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
        modes: the training modes the model is meant for.
    """

    multi_interest: ClassVar[bool] = False
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
        raise NotImplementedError

    def encode_item(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """ITEM [...] -> [..., D]."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both towers for a training batch: (user [B, D], pos [B, D], neg [B, N, D]).

        Training calls this (so that DDP sees one forward); a multi-interest user is reduced to one
        vector per row against its positive by `user_for_target`.
        """
        pos_ids, neg_ids = batch[B.POS], batch[B.NEG]
        # Encode each distinct item once: B * (1 + N) draws usually hold far fewer distinct items.
        unique, inverse = torch.unique(torch.cat([pos_ids, neg_ids.reshape(-1)]), return_inverse=True)
        items = self.encode_item({B.ITEM: unique})[inverse]
        pos = items[: len(pos_ids)]
        neg = items[len(pos_ids):].reshape(*neg_ids.shape, -1)
        return self.user_for_target(batch, pos), pos, neg

    def user_for_target(self, batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The user vector [B, D] that training scores against `target` [B, D]: `encode_user`, with a
        multi-interest user's interests combined by label-aware attention."""
        user = self.encode_user(batch)
        if user.dim() == 2:
            return user
        return label_aware_attention(user, target, power=getattr(self, "attention_power", 1.0))

    def all_item_ids(self, device=None) -> torch.Tensor:
        """[num_items] every dense item id (1..num_items)."""
        return torch.arange(1, self.num_items + 1, device=device)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """A tower's last step: L2-normalized when the model scores by cosine (`normalize`), else as is."""
        return F.normalize(x, dim=-1) if self.normalize else x
