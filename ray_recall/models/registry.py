"""Models by name."""

from __future__ import annotations

from typing import Callable

from ray_recall.errors import ConfigError

_MODELS: dict[str, type] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make a `RecallModel` subclass buildable by name (configs, workers, saved files)."""

    def wrap(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        cls.registry_name = name
        _MODELS[name] = cls
        return cls

    return wrap


def available_models() -> list[str]:
    return sorted(_MODELS)


def is_registered(cls: type) -> bool:
    """Whether `cls` itself (not just a parent) is the class registered under its name."""
    return _MODELS.get(getattr(cls, "registry_name", None)) is cls


def get_model_class(name: str) -> type:
    if name not in _MODELS:
        raise ConfigError(f"model.name={name!r} is unknown; choose one of {available_models()}")
    return _MODELS[name]
