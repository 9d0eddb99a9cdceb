"""`ModelSpec`: a model named but not built (registry name, embedding size, hyperparameters), and the checks
that a spec fits its data, made before any work starts."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ray_recall.config import ModelConfig
from ray_recall.errors import ConfigError
from ray_recall.models.registry import get_model_class, is_registered
from ray_recall.schema import DataSchema


def constructor_params(cls: type) -> dict[str, inspect.Parameter]:
    """A model class's hyperparameters: its constructor's parameters after (self, schema, embedding_dim)."""
    params = list(inspect.signature(cls.__init__).parameters.values())
    return {p.name: p for p in params[3:] if p.kind is not inspect.Parameter.VAR_KEYWORD}


@dataclass(frozen=True)
class ModelSpec:
    """A model named but not built: what a config's `model` section holds, as an object.

    `DSSM(user_features=["age"])` (a model class called without data) returns one; `build(schema)`
    (or `bind(data)`) makes the model, sized from the data. `item_num` is the caller's item count, checked
    against the data when the model is built (it may be larger than the data's, not smaller).
    """

    name: str
    embedding_dim: int
    params: dict = field(default_factory=dict)
    item_num: int | None = None
    is_bound: ClassVar[bool] = False  # a spec holds no weights; the built model does

    @classmethod
    def of(cls, model_cls: type, embedding_dim: int | None = None, *, item_num: int | None = None,
           **params) -> "ModelSpec":
        """The spec of `model_cls` with these hyperparameters; a name the constructor does not take fails now."""
        if not is_registered(model_cls):
            raise ConfigError(f"{model_cls.__name__} is not a registered model: decorate it with "
                              "@register_model('<name>') so that configs and Ray Train workers can build it by name")
        check_param_names(model_cls, params)
        if embedding_dim is None:
            embedding_dim = inspect.signature(model_cls.__init__).parameters["embedding_dim"].default
            if embedding_dim is inspect.Parameter.empty:
                raise ConfigError(f"{model_cls.__name__} needs embedding_dim")
        return cls(model_cls.registry_name, int(embedding_dim), dict(params), item_num)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "ModelSpec":
        params = dict(cfg.params)
        item_num = params.pop("item_num", None)
        return cls.of(get_model_class(cfg.name), cfg.embedding_dim, item_num=item_num, **params)

    @property
    def model_class(self) -> type:
        return get_model_class(self.name)

    @property
    def hyperparameters(self) -> dict:
        """The constructor's keyword arguments as given (what a config's `model.params` holds), item_num included."""
        return {**({"item_num": self.item_num} if self.item_num is not None else {}), **self.params}

    def config(self) -> ModelConfig:
        return ModelConfig(name=self.name, embedding_dim=self.embedding_dim, params=self.hyperparameters)

    def build(self, schema: DataSchema):
        """The model for `schema`, with fresh weights (from torch's current seed)."""
        check_against_schema(self.model_class.__name__, schema, self.item_num, self.params)
        model = self.model_class(schema, self.embedding_dim, **self.params)
        model.spec = self  # keeps item_num, which the constructor does not take
        return model

    def bind(self, data):
        """`build` for a data set: anything with a `.schema` (a `SeqData`), or a `DataSchema`."""
        return self.build(data if isinstance(data, DataSchema) else data.schema)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        return f"ModelSpec({self.name!r}, embedding_dim={self.embedding_dim}{', ' + args if args else ''})"


def check_param_names(model_cls: type, params: dict) -> None:
    accepted = list(constructor_params(model_cls))
    bad = sorted(set(params) - set(accepted))
    if bad:
        hint = difflib.get_close_matches(bad[0], accepted, n=1)
        raise ConfigError(f"{model_cls.__name__} has no parameter {bad[0]!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; accepted: {accepted + ['item_num']}")


def check_against_schema(cls_name: str, schema: DataSchema, item_num, params: dict) -> None:
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


def check_model_config(cfg: ModelConfig, max_len: int = 50, user_features: dict[str, bool] | None = None,
                       item_features: dict[str, bool] | None = None) -> None:
    """Fail now, with a ConfigError naming the key, if `cfg` cannot build a model for data of this shape.

    Builds the model once on a stub schema of 2 users and 2 items with the data's max_len and feature names
    ({name: multi-valued}; None = not known, feature names unchecked), so a misspelt parameter, a feature the
    data will not have or an impossible value (heads that do not divide the dimension) surface before the
    data stage runs, not inside a training worker.
    """
    try:
        spec = ModelSpec.from_config(cfg)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith("model.name") else f"model.params: {e}") from None
    if user_features is None or item_features is None:
        return
    stub = DataSchema(num_users=2, num_items=max(2, spec.item_num or 2), max_len=max_len)
    for side, names, target in (("user", user_features, stub.user_features), ("item", item_features, stub.item_features)):
        n = stub.num_users if side == "user" else stub.num_items
        for name, multi in names.items():
            target[name] = np.zeros((n + 1, 2) if multi else n + 1, dtype=np.int64)
            stub.cardinality[name] = 1
    try:
        spec.build(stub)
    except ConfigError as e:
        raise ConfigError(f"model.params: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.params of {cfg.name!r}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Building from a name, a saved model file or a run directory


def build_model(name: str, schema: DataSchema, embedding_dim: int, params: dict | None = None):
    """A registered model built for `schema`; a bad keyword names the model and the accepted ones."""
    return ModelSpec.from_config(ModelConfig(name=name, embedding_dim=embedding_dim, params=dict(params or {}))).build(schema)


def build_from_file(model_file, schema: DataSchema):
    """A `rundir.ModelFile` -> the model it holds, weights loaded, in eval mode."""
    model = build_model(model_file.name, schema, model_file.embedding_dim, model_file.params)
    model.load_state_dict(model_file.state_dict)
    return model.eval()


def describe_trained(run) -> tuple[int, int]:
    """(embedding dim, interests per user: 1 unless multi-interest) of <run>'s trained model, without its weights:
    the model is built on the meta device (no memory) from the file's name and params."""
    model_file = run.read_model()
    with torch.device("meta"):
        model = build_model(model_file.name, run.read_schema(), model_file.embedding_dim, model_file.params)
    return model.embedding_dim, interests_of(model)


def interests_of(model) -> int:
    """Vectors per user: K for a multi-interest model, else 1."""
    return int(getattr(model, "num_interests", 1)) if model.multi_interest else 1


def load_trained(run):
    """(model in eval mode, schema) from <run>/model/model.pt."""
    schema = run.read_schema()
    return build_from_file(run.read_model(), schema), schema
