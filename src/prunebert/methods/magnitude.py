"""Magnitude pruning: the smallest |w| go first (Han et al. 2015; Zhu & Gupta 2017; Gordon et al. 2020)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from prunebert.methods.base import PruningMethod
from prunebert.methods.registry import register_method

__all__ = ["MagnitudePruning", "magnitude_scores"]


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """Importance = |w|."""
    return weight.detach().abs()


@register_method("magnitude")
class MagnitudePruning(PruningMethod):
    """Rank weights by absolute value; with a gradual schedule this is Gordon et al.'s GMP."""

    paper: ClassVar[str] = (
        "Han et al. 2015, arXiv:1506.02626; Zhu & Gupta 2017, arXiv:1710.01878; Gordon et al. 2020, "
        "arXiv:2002.08307"
    )

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """|w| for every target."""
        return {name: magnitude_scores(w) for name, w in weights.items()}
