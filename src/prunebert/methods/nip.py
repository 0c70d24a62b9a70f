"""NIP: iterative magnitude pruning with retraining (Han et al. 2015), the baseline of Guo et al. 2019."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from prunebert.methods.base import PruningMethod
from prunebert.methods.magnitude import magnitude_scores
from prunebert.methods.registry import register_method

__all__ = ["IterativeMagnitudePruning"]


@register_method("nip")
class IterativeMagnitudePruning(PruningMethod):
    """Prune the smallest |w| in equal rounds, retraining in between (Han et al. 2015; Guo et al. 2019's NIP).

    Defaults: 5 rounds, the first at step 0 and the last at 64% of training (rounds every 16% up to
    `end_fraction` 0.8), so each round is retrained for 16% of the run and the target sparsity, where the
    damage is largest, gets the longest recovery (36%).
    """

    paper: ClassVar[str] = "Han et al. 2015, arXiv:1506.02626; as NIP in Guo et al. 2019, arXiv:1909.12486"
    defaults: ClassVar[dict[str, Any]] = {"schedule": "iterative", "iterations": 5, "end_fraction": 0.8}

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """|w| for every target."""
        return {name: magnitude_scores(w) for name, w in weights.items()}
