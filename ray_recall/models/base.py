"""The model contract: `encode_user(batch)` and `encode_item(batch)`, nothing else.

Training, embedding, evaluation and serving call only these two methods, so a
new model is one file plus `@register_model`. Losses never live in a model.

A model may also be constructed without data (`GRU4Rec(item_num=1682, hidden_size=64)`,
`DSSM(user_features=["age"])`): it is then *unbound*, holds only its hyperparameters, and is
built when bound to a preprocessed data set (`model.bind(data)`, which `MatchTrainer.fit` does).
Every subclass gets this from `RecallModel.__init_subclass__`; subclasses keep writing their
constructor as `(schema, embedding_dim, *, **hyperparameters)`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.config import MODES
from ray_recall.data.schema import DataSchema
from ray_recall.errors import ConfigError, DataError


class RecallModel(nn.Module):
    """Base class of every recall model.

    Subclasses set `multi_interest = True` when `encode_user` returns [B, K, D]
    (one vector per interest) instead of [B, D].
    """

    multi_interest: ClassVar[bool] = False
    modes: ClassVar[tuple[str, ...]] = MODES  # training modes the model is meant for

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "_unwrapped"):
            cls.__init__ = _bindable_init(init)

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

    # ---- construction without data ------------------------------------------------------
    @property
    def is_bound(self) -> bool:
        """False while the model was constructed without data and has not been bound yet."""
        return not self.__dict__.get("_unbound", False)

    @property
    def hyperparameters(self) -> dict:
        """The constructor's keyword arguments (what a config's `model.params` holds), without the schema."""
        args = self.__dict__.get("_build_args")
        if args is None:
            raise ConfigError(f"{type(self).__name__}'s constructor does not take (schema, embedding_dim, **params), so "
                              "its hyperparameters are unknown")
        return dict(args[1])

    def bind(self, data) -> "RecallModel":
        """Build the model for `data` (a `SeqData` from `generate_seq_features`, or a `DataSchema`) and return it.

        An unbound model is built now from its recorded hyperparameters (fresh weights). A model
        that is already built must match the data's sizes and is left as it is. Binding a `SeqData`
        also attaches its vocabularies and sequences, which `get_user_vector` and `get_item_ids` use.
        """
        schema = data if isinstance(data, DataSchema) else data.schema
        if not self.is_bound:
            embedding_dim, params = self.__dict__["_build_args"]
            type(self).__init__(self, schema, embedding_dim, **params)
        elif (self.num_users, self.num_items, self.max_len) != (schema.num_users, schema.num_items, schema.max_len):
            raise DataError(
                f"{type(self).__name__} was built for {self.num_users} users, {self.num_items} items and max_len "
                f"{self.max_len}, but the data has {schema.num_users}, {schema.num_items} and {schema.max_len}: construct "
                f"the model without a schema ({type(self).__name__}(...)) and let bind/fit size it from the data")
        if not isinstance(data, DataSchema):
            self.__dict__["_data"] = data
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not self.is_bound:
            raise DataError(f"{type(self).__name__} is not built yet, so it cannot take a state dict: bind it to the data "
                            f"it was trained on first, model.bind(data), then load_state_dict")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if self.__dict__.get("_unbound", False):
                raise self._not_built(f"has no {name!r}") from None
            raise

    def _not_built(self, what: str) -> AttributeError:
        return AttributeError(f"{type(self).__name__} is not built yet, so it {what}: it was constructed without data. "
                              "Train it with MatchTrainer(model, ...).fit(data.train) or call model.bind(data) first")

    # ---- vectors in plain numpy ----------------------------------------------------------
    def _bound_data(self, what: str):
        data = self.__dict__.get("_data")
        if data is None:
            raise DataError(f"{what} needs the data the model was trained on (its vocabularies and user sequences): "
                            "call model.bind(data) with the SeqData from generate_seq_features "
                            "(MatchTrainer.fit does this)")
        return data

    def get_item_vectors(self) -> np.ndarray:
        """[num_items, D] float32 item vectors (eval mode); row j is dense item j + 1 (see `get_item_ids`)."""
        from ray_recall.ranking import embed_all_items

        if not self.is_bound:
            raise self._not_built("has no item vectors")
        with _eval_mode(self):
            return embed_all_items(self).cpu().numpy()

    def get_item_ids(self, dense: bool = False) -> np.ndarray:
        """[num_items] the id of each row of `get_item_vectors`: original item ids, or dense ids 1..N if `dense`."""
        if dense:
            return np.arange(1, self.num_items + 1)
        return np.asarray(self._bound_data("get_item_ids").decode_items(np.arange(1, self.num_items + 1)))

    def get_user_vectors(self, user_ids) -> np.ndarray:
        """Original user ids [U] -> [U, D] float32 ([U, K, D] for multi-interest models), eval mode.

        Each user's history is their whole known sequence (train, validation and test items), as the
        embedding job and the endpoint use it.
        """
        from ray_recall.train.batches import user_batch

        data = self._bound_data("get_user_vectors")
        ids = np.atleast_1d(np.asarray(user_ids))
        dense = np.asarray(data.encode_users(ids), dtype=np.int64)
        if (dense == 0).any():
            unknown = ids[dense == 0][0]
            raise DataError(f"user_id {unknown!r} is not in the data ({data.num_users} users, e.g. "
                            f"{data.decode_users(np.arange(1, min(4, data.num_users + 1))).tolist()})")
        seqs = data.sequences
        batch = user_batch(seqs, dense, seqs.length(dense), self.max_len)
        return self._encode_users(batch)

    def get_user_vector(self, user_id=None, *, history=None) -> np.ndarray:
        """[D] float32 ([K, D] for multi-interest models) for one user, eval mode.

        `user_id`: an original user id of the bound data (history = their whole known sequence).
        `history`: original item ids, oldest first, for a user the data does not know (items outside
        the data are skipped; the last max_len are used). Give one of the two, or both to score a
        known user against a different history.
        """
        if history is None:
            if user_id is None:
                raise ValueError("get_user_vector needs user_id= or history=")
            return self.get_user_vectors([user_id])[0]
        data = self._bound_data("get_user_vector")
        items = np.asarray(data.encode_items(np.asarray(list(history))), dtype=np.int64)
        items = items[items > 0][-self.max_len:]
        hist = np.zeros((1, self.max_len), dtype=np.int64)
        hist[0, :len(items)] = items
        user = 0 if user_id is None else int(data.encode_users(np.asarray([user_id]))[0])
        batch = {B.USER: torch.tensor([user]), B.HIST: torch.from_numpy(hist), B.HIST_LEN: torch.tensor([len(items)])}
        return self._encode_users(batch)[0]

    def _encode_users(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        device = next(self.parameters()).device
        with _eval_mode(self), torch.no_grad():
            return self.encode_user({k: v.to(device) for k, v in batch.items()}).cpu().numpy()


class _eval_mode:
    """Context manager: the model in eval mode inside, its previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _bindable_init(init):
    """Wrap a model constructor `(self, schema, embedding_dim=..., *, **params)` so that it also accepts

    - no schema: the model records (embedding_dim, params) and stays unbound until `bind`;
    - `item_num`: the caller's item count, checked against the schema (never smaller than its items).

    Hyperparameter names are checked at once, bound or not; values when the model is built.
    """
    sig = inspect.signature(init)
    names = list(sig.parameters)
    if names[:3] != ["self", "schema", "embedding_dim"]:
        return init  # not the model contract's shape: constructed the ordinary way only
    default_dim = sig.parameters["embedding_dim"].default
    dim_param = sig.parameters["embedding_dim"]
    if default_dim is inspect.Parameter.empty:  # keep the signature valid after schema gains a default
        dim_param = dim_param.replace(default=None)
    accepted = [p for p in names[3:] if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(init)
    def __init__(self, schema: DataSchema | None = None, embedding_dim: int | None = None, **params):
        cls_name = type(self).__name__
        if embedding_dim is None:
            if default_dim is inspect.Parameter.empty:
                raise TypeError(f"{cls_name} needs embedding_dim")
            embedding_dim = default_dim
        bad = sorted(set(params) - set(accepted) - {"item_num"})
        if bad:
            hint = difflib.get_close_matches(bad[0], accepted, n=1)
            raise ConfigError(f"{cls_name} has no parameter {bad[0]!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; accepted: {accepted + ['item_num']}")
        if type(self).__init__ is __init__:  # the most derived constructor records what a config needs
            self.__dict__["_build_args"] = (embedding_dim, dict(params))
        if schema is None:
            nn.Module.__init__(self)
            self.__dict__["_unbound"] = True
            self.embedding_dim = embedding_dim
            return
        if not isinstance(schema, DataSchema):  # a SeqData: bind to it
            data = schema
            if not hasattr(data, "schema"):
                raise TypeError(f"{cls_name}'s first argument is the data (a DataSchema or a SeqData), not "
                                f"{type(data).__name__}; pass hyperparameters by keyword, e.g. embedding_dim=...")
            self.__dict__["_unbound"] = True
            nn.Module.__init__(self)
            self.bind(data)
            return
        item_num = params.pop("item_num", None)
        _check_against_schema(cls_name, schema, item_num, params)
        try:
            init(self, schema, embedding_dim, **params)
        except BaseException:
            if self.__dict__.get("_unbound", False):  # a failed bind leaves the model unbound, not half-built
                nn.Module.__init__(self)
                self.embedding_dim = embedding_dim
            raise
        self.__dict__["_unbound"] = False

    __init__._unwrapped = init
    __init__.__signature__ = sig.replace(parameters=[
        sig.parameters["self"],
        sig.parameters["schema"].replace(default=None, annotation="DataSchema | None"),
        dim_param,
        inspect.Parameter("item_num", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None"),
        *[sig.parameters[p] for p in names[3:]],
    ])
    return __init__


def _check_against_schema(cls_name: str, schema: DataSchema, item_num, params: dict) -> None:
    """The errors a user makes when a model meets its data, each naming the fix."""
    if item_num is not None and int(item_num) < schema.num_items:
        raise ConfigError(
            f"{cls_name}(item_num={item_num}) is smaller than the data's item count ({schema.num_items} items, dense ids "
            f"1..{schema.num_items}): pass item_num=data.num_items, or leave item_num out and the item table is sized "
            "from the data")
    for side, tables in (("user", schema.user_features), ("item", schema.item_features)):
        names = params.get(f"{side}_features")
        if names is None:
            continue
        if isinstance(names, str):
            raise ConfigError(f"{cls_name}({side}_features={names!r}) must be a list of feature names, e.g. [{names!r}]")
        missing = [n for n in names if n not in tables]
        if missing:
            hint = difflib.get_close_matches(missing[0], list(tables), n=1)
            raise ConfigError(
                f"{cls_name}({side}_features={list(names)!r}): {missing[0]!r} is not in the data's {side} features "
                f"{sorted(tables)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f". Add it with generate_seq_features({side}_attribute_cols=[...]) (data.{side}_feature_cols in a "
                f"config), or leave {side}_features out to use all of them")


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
