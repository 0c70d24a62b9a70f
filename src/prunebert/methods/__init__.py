"""Pruning methods, one small module each, found by name through the registry."""

from prunebert.methods import (  # noqa: F401  (registers them)
    gates,
    layerdrop,
    lowrank,
    lowrank_l0,
    magnitude,
    movement,
    nip,
    obs,
    random_baseline,
    rpp,
    structured,
)
from prunebert.methods.base import MethodOptions, PruningMethod
from prunebert.methods.registry import available_methods, create_method, register_method

__all__ = ["MethodOptions", "PruningMethod", "available_methods", "create_method", "register_method"]
