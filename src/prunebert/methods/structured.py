"""Structured pruning: whole attention heads and FFN neurons by importance (Michel, Levy & Neubig 2019).

Importance of a head (or neuron) is the gradient of the loss with respect to a gate on its output,
accumulated over training batches (Michel et al. 2019, "Are Sixteen Heads Really Better than One?",
arXiv:1905.10650, eq. 2; for FFN neurons this is the first-order Taylor criterion of Molchanov et al.
2017/2019):

    I_h = sum over optimizer steps of | sum over the head's columns of W_o * dL/dW_o |

which is |dL/d(gate_h)| per step, read exactly from the output projection's weight gradient (see
`prunebert.structure`). Michel et al. take the absolute value per example; the Trainer gives one
gradient per batch, so here it is taken per optimizer step. With `normalize` each layer's importances
are divided by their L2 norm before a global ranking, as the paper does. `criterion: magnitude` ranks by
the L2 norm of the output columns instead (no gradients needed).

The masks are the ordinary per-weight masks: a pruned head is its rows of query/key/value and its
columns of attention_output; a pruned neuron is its row of ffn_in and its column of ffn_out. So the
sparsity knob is the fraction of heads (and of neurons) removed, which is also the fraction of target
weights set to zero. Importance is re-estimated after every pruning round (the paper's iterative
procedure), so the default schedule is `iterative`, starting after 20% of training has scored them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args

import torch
from pydantic import Field, StrictBool
from torch import nn

from prunebert.errors import PrunebertError
from prunebert.masks import global_masks, layerwise_masks
from prunebert.methods.base import MethodOptions, PruneSettings, PruningMethod
from prunebert.methods.registry import register_method
from prunebert.structure import (
    INPUT_ROLES,
    OUTPUT_ROLES,
    GroupSet,
    broadcast_groups,
    column_group_reduce,
    gate_gradient,
    group_norms,
    group_sets,
)
from prunebert.targets import Target

__all__ = [
    "GroupPruning",
    "HeadPruning",
    "NeuronPruning",
    "StructuredOptions",
    "StructuredPruning",
    "choose_groups",
    "normalize_per_layer",
]

Criterion = Literal["taylor", "magnitude"]
CRITERIA: tuple[str, ...] = get_args(Criterion)


def normalize_per_layer(importance: torch.Tensor) -> torch.Tensor:
    """Importance divided by its L2 norm (Michel et al.'s per-layer normalisation); zeros stay zeros."""
    norm = importance.norm().clamp_min(torch.finfo(importance.dtype).tiny)
    normalized: torch.Tensor = importance / norm
    return normalized


def choose_groups(scores: Mapping[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks over groups: `round(sparsity * G)` lowest pruned over all sets (global) or per set."""
    chooser = global_masks if scope == "global" else layerwise_masks
    return chooser(scores, sparsity)


class StructuredOptions(MethodOptions):
    """How a group's importance is measured and compared across layers."""

    criterion: Criterion = Field(
        "taylor",
        description="`taylor`: |gate gradient| summed over optimizer steps; `magnitude`: L2 norm of the "
        "output columns (no gradients needed)",
    )
    normalize: StrictBool = Field(
        True, description="divide each layer's importances by their L2 norm before ranking"
    )


class GroupPruning(PruningMethod):
    """Base of methods that prune whole heads (attention targets) and neurons (FFN targets) to `sparsity`.

    Subclasses say how important each group is (`group_values`); this class spreads the values over the
    member weights as scores and turns them back into whole-group masks.
    """

    structured = True

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        self.sets: list[GroupSet] = []
        self.scope = "global"
        self._pruned: dict[str, float] = {}  # kind -> fraction of groups pruned at the last round

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Group the targets into heads / neurons per layer, sized from the model's config."""
        allowed = {OUTPUT_ROLES[k] for k in OUTPUT_ROLES} | {r for k in INPUT_ROLES for r in INPUT_ROLES[k]}
        stray = [t for t in targets if t.role not in allowed]
        if stray:
            raise PrunebertError(
                f"method {self.name!r} removes whole heads and FFN neurons, but {stray[0].name} has role "
                f"{stray[0].role!r}; drop --pruning.targets / include_embeddings and pick encoder roles"
            )
        factorized = [t for t in targets if getattr(model.get_submodule(t.name), "factorized", False)]
        if factorized:
            raise PrunebertError(
                f"method {self.name!r} removes whole heads and FFN neurons, but {factorized[0].name} is "
                "factorised (lowrank): its rank is pruned by per-weight methods; target other roles"
            )
        self.sets = group_sets(targets, getattr(model, "config"))  # noqa: B009  (any nn.Module)
        self.scope = config.scope

    def group_values(self, s: GroupSet, weight: torch.Tensor) -> torch.Tensor:
        """(G,) importance of the groups of `s` (higher = keep), given its output projection's weight."""
        raise NotImplementedError

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each group's importance spread over its rows / columns of every member weight."""
        out = {}
        for s in self.sets:
            values = self.group_values(s, weights[s.output.param_name])
            for target, axis in s.members():
                shape = weights[target.param_name].shape
                out[target.param_name] = broadcast_groups(values, s.group_size, shape, axis)
        return out

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        """Whole groups, read back from the output projection's scores (already -inf where pruned)."""
        masks = {}
        for kind in OUTPUT_ROLES:
            sets = [s for s in self.sets if s.kind == kind]
            if not sets:
                continue
            group_scores = {
                s.key: column_group_reduce(scores[s.output.param_name], s.group_size) for s in sets
            }
            keep = choose_groups(group_scores, sparsity, self.scope)
            total = sum(k.numel() for k in keep.values())
            self._pruned[kind] = sum(int((~k).sum()) for k in keep.values()) / max(1, total)
            for s in sets:
                for target, axis in s.members():
                    shape = scores[target.param_name].shape
                    masks[target.param_name] = broadcast_groups(keep[s.key], s.group_size, shape, axis)
        return masks

    def log_metrics(self) -> dict[str, float]:
        """`heads_pruned` / `neurons_pruned`: fraction of groups removed at the last round."""
        return {f"{kind}_pruned": round(value, 4) for kind, value in self._pruned.items()}


@register_method("structured")
class StructuredPruning(GroupPruning):
    """Whole heads (attention targets) and FFN neurons (FFN targets) by gate-gradient importance."""

    paper: ClassVar[str] = "Michel, Levy & Neubig 2019, arXiv:1905.10650"
    options_cls: ClassVar[type[MethodOptions]] = StructuredOptions
    defaults: ClassVar[dict[str, Any]] = {
        "schedule": "iterative",
        "iterations": 5,
        "start_fraction": 0.2,
        "end_fraction": 0.8,
        "scope": "global",
    }

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, StructuredOptions)
        self.opts = options
        self._importance: dict[str, torch.Tensor] = {}  # set key -> (G,) float32, summed since last round

    @torch.no_grad()
    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Add this step's |dL/d(gate)| of every head / neuron (Taylor criterion only)."""
        if self.opts.criterion != "taylor":
            return
        for s in self.sets:
            w = weights[s.output.param_name]
            if w.grad is None:
                continue
            step = gate_gradient(w, w.grad, s.group_size).abs()
            previous = self._importance.get(s.key)
            self._importance[s.key] = step if previous is None else previous.to(step.device) + step

    def group_values(self, s: GroupSet, weight: torch.Tensor) -> torch.Tensor:
        """(G,) importance of the set's groups, normalised per layer when asked."""
        if self.opts.criterion == "magnitude":
            values = group_norms(weight, s.group_size)
        else:
            groups = weight.shape[1] // s.group_size
            values = self._importance.get(s.key, torch.zeros(groups)).to(weight.device)
        return normalize_per_layer(values) if self.opts.normalize else values

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """Re-estimate importance from scratch for the next round, as in the paper's iterative pruning."""
        self._importance = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Importance accumulated since the last round, so a resumed run ranks as an uninterrupted one."""
        return {f"importance.{key}": value for key, value in self._importance.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        prefix = "importance."
        self._importance = {
            k[len(prefix) :]: v.float().clone() for k, v in state.items() if k.startswith(prefix)
        }


@register_method("heads")
class HeadPruning(StructuredPruning):
    """Whole attention heads only: the attention roles are the default targets."""

    defaults: ClassVar[dict[str, Any]] = {
        **StructuredPruning.defaults,
        "roles": ["query", "key", "value", "attention_output"],
    }


@register_method("neurons")
class NeuronPruning(StructuredPruning):
    """Whole FFN intermediate neurons only: the FFN roles are the default targets."""

    defaults: ClassVar[dict[str, Any]] = {**StructuredPruning.defaults, "roles": ["ffn_in", "ffn_out"]}
