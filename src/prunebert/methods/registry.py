"""Pruning methods looked up by name: the CLI, recipes and the pruner use only these names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from prunebert.errors import PrunebertError
from prunebert.methods.base import MethodOptions, PruningMethod, parse_options

__all__ = ["available_methods", "create_method", "method_class", "method_options", "register_method"]

_REGISTRY: dict[str, type[PruningMethod]] = {}
M = TypeVar("M", bound=type[PruningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available under `name`."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"pruning method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[PruningMethod]:
    """The class registered as `name`, or a one-line error listing the choices."""
    if name not in _REGISTRY:
        raise PrunebertError(
            f"unknown pruning method {name!r}; choose one of {', '.join(available_methods())}"
        )
    return _REGISTRY[name]


def method_options(name: str, options: Mapping[str, Any] | None = None) -> MethodOptions:
    """Method `name`'s options model from a recipe's `options` mapping (every default filled in)."""
    return parse_options(method_class(name).options_cls, name, options or {})


def create_method(name: str, options: Mapping[str, Any] | None = None, seed: int = 0) -> PruningMethod:
    """Instantiate method `name` with validated options."""
    return method_class(name)(method_options(name, options), seed=seed)
