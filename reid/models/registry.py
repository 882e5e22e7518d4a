"""A small model registry: ``create_model(name, **kwargs)`` as in timm."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ValueError(f"model name '{name}' is already registered")
        _MODELS[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds the registered model ``name`` with keyword arguments ``kwargs``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the registered names).
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model '{name}'; registered models: {list_models()}")
    return _MODELS[name](**kwargs)
