"""Random pruning: the control that shows how much the choice of weights matters (Gordon et al. 2020)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import ClassVar

import torch

from prunebert.methods.base import PruningMethod
from prunebert.methods.registry import register_method

__all__ = ["RandomPruning", "random_scores"]


def random_scores(shape: torch.Size, seed: int, name: str) -> torch.Tensor:
    """Uniform scores fixed by (seed, weight name), so gradual random masks are nested and reproducible."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.rand(shape, generator=generator)


@register_method("random")
class RandomPruning(PruningMethod):
    """Prune uniformly at random; the same seed gives the same masks on every rank and every run."""

    paper: ClassVar[str] = "the control of Gordon, Duh & Andrews 2020, arXiv:2002.08307"

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Seeded uniform scores, on each weight's device."""
        return {n: random_scores(w.shape, self.seed, n).to(w.device) for n, w in weights.items()}
