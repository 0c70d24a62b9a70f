"""Low-rank factorised pruning: train W = P diag(g) Q and prune rank-1 components (Wang et al. 2019).

Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models" (EMNLP 2020, arXiv:1910.04732).
When the pruner binds, every target Linear becomes a `prunebert.transforms.lowrank.LowRankLinear` started from
its SVD (same outputs), and training updates P, g and Q (so create the Pruner before the optimizer, as
prunebert's stages and `PruningCallback` do). The diagonal g is the module's `weight`, so the pruner's
ordinary masks, schedule and scope act on rank-1 components: a masked g_k is exactly 0, gets no gradient
and no optimizer moments.

Components are ranked by their size, the Frobenius norm |g_k| ||p_k|| ||q_k|| of g_k p_k q_k^T (the
singular value at the start; unlike |g_k| alone it cannot be gamed by P and Q growing while g shrinks).
The paper learns Hard Concrete gates on the components under an L0 penalty held at the target by an
augmented Lagrangian: that is `lowrank_l0` (`prunebert.methods.lowrank_l0`, this factorisation plus the
gates); this method prunes by size on the pruner's schedule instead (default `cubic`, `scope: layer`:
every matrix loses the same fraction of its rank).

The sparsity knob is the fraction of rank-1 components removed (of g's entries, the masked fraction
the run reports). `prunebert slim` then keeps each matrix's r' survivors as two Linears in -> r' -> out
where r' (out + in) < out x in, else multiplies them back into one W; `lowrank_weights` (logged) is the
fraction of the targets' dense weights the slimmed model will hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from prunebert.methods.base import MethodOptions, PruneSettings, PruningMethod
from prunebert.methods.registry import register_method
from prunebert.targets import Target
from prunebert.transforms.lowrank import LowRankLinear, component_norms, factorize, kept_weights_fraction

__all__ = ["LowRankPruning"]


@register_method("lowrank")
class LowRankPruning(PruningMethod):
    """Rank-1 components of every target weight, smallest first, after an SVD factorisation."""

    paper: ClassVar[str] = "Wang, Wohlwend & Lei 2019, arXiv:1910.04732"

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.modules: dict[str, LowRankLinear] = {}  # the target's weight key (its diagonal) -> module

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Factorise every target Linear (ones already factorised, from an earlier run, stay as they are)."""
        plain = [t.name for t in targets if not isinstance(model.get_submodule(t.name), LowRankLinear)]
        factorize(model, plain)
        for t in targets:
            module = model.get_submodule(t.name)
            assert isinstance(module, LowRankLinear)
            self.modules[t.param_name] = module

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The Frobenius norm of each rank-1 component, shaped like the diagonal. (r,) per target"""
        return {
            name: component_norms(self.modules[name].left, g, self.modules[name].right).to(g.device)
            for name, g in weights.items()
        }

    def log_metrics(self) -> dict[str, float]:
        """`lowrank_weights`: the slimmed targets' weights as a fraction of their dense weights."""
        return {"lowrank_weights": round(kept_weights_fraction(self.modules), 4)}
