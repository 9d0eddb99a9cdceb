"""Models by name."""

from __future__ import annotations

from typing import Callable

_MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        cls.registry_name = name
        _MODELS[name] = cls
        return cls

    return wrap


def available_models() -> list[str]:
    return sorted(_MODELS)


def get_model_class(name: str) -> type:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {available_models()}")
    return _MODELS[name]


def build_model(name: str, schema, embedding_dim: int, params: dict | None = None):
    """Instantiate a registered model; a bad keyword names the model and the accepted ones."""
    import inspect

    cls = get_model_class(name)
    params = dict(params or {})
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "schema", "embedding_dim")]
    bad = sorted(set(params) - set(accepted))
    if bad:
        raise ValueError(f"model {name!r} has no parameter {bad[0]!r}; accepted: {accepted}")
    return cls(schema, embedding_dim, **params)
