"""Movement pruning: keep the weights moving away from zero (Sanh, Wolf & Rush 2020, arXiv:2005.07683).

Magnitude pruning keeps large weights; movement pruning keeps weights that fine-tuning pushes away from
zero. Each target weight W gets an importance score S (zeros at the start) that accumulates the first-order
movement of every optimizer step, straight-through the mask:

    S <- S - lr_scores * W * dL/dW'        (W' = W * M, the effective weight the forward pass used)

Hard movement keeps the top-k of S (k from the schedule); soft movement keeps S > tau and lets a
regulariser lam * sum(sigmoid(S)) drive the scores, hence the sparsity, down.

Memory: one float32 score per target weight (about 340 MB for the 85M encoder weights of BERT-base).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from prunebert.methods.base import MethodOptions, PruningMethod
from prunebert.methods.registry import register_method

__all__ = [
    "MovementOptions",
    "MovementPruning",
    "SoftMovementOptions",
    "SoftMovementPruning",
    "movement_update",
    "sigmoid_regulariser_step",
    "threshold_masks",
]


def movement_update(
    scores: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, lr_scores: float = 1.0
) -> torch.Tensor:
    """S - lr_scores * W * dL/dW' in float32: scores rise for weights moving away from zero."""
    return scores - lr_scores * weight.detach().float() * grad.detach().float()


def sigmoid_regulariser_step(scores: torch.Tensor, lam: float, lr_scores: float = 1.0) -> torch.Tensor:
    """One step down the gradient of lam * sum(sigmoid(S)): S - lr * lam * s * (1 - s), s = sigmoid(S)."""
    s = torch.sigmoid(scores)
    return scores - lr_scores * lam * s * (1.0 - s)


def threshold_masks(scores: Mapping[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
    """Soft movement's masks: keep exactly the entries whose score exceeds `tau`."""
    return {name: s > tau for name, s in scores.items()}


def _number(name: str, value: object, low: float | None = None, strict: bool = False) -> float:
    """`value` as a finite float (at least / above `low`), or a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class MovementOptions(MethodOptions):
    """lr_scores: step size of the score accumulation (> 0; top-k masks do not depend on it)."""

    lr_scores: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_scores", _number("lr_scores", self.lr_scores, 0.0, strict=True))


@dataclass(frozen=True)
class SoftMovementOptions(MovementOptions):
    """lam: regulariser pull per step, in the units of W * dL/dW (>= 0, off by default); tau: threshold."""

    lam: float = 0.0
    tau: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "lam", _number("lam", self.lam, 0.0))
        object.__setattr__(self, "tau", _number("tau", self.tau))


@register_method("movement")
class MovementPruning(PruningMethod):
    """Hard movement pruning: top-k of the accumulated movement scores, re-ranked at every mask update.

    Not monotone: a pruned weight comes back when its score overtakes a kept one. Unlike the paper,
    which keeps the dense W behind the mask so a regrown weight returns with its old value, the pruner
    zeroes pruned weights in place (one copy of the weights, and masks are exact zeros everywhere: in
    the forward pass, the optimizer moments, checkpoints). So a regrown weight restarts at 0.0, and a
    pruned weight's score is frozen (its W is 0, so W * dL/dW' is 0): it regrows only when kept scores
    fall below it. Scores are read from `weight.grad` once per optimizer step, after accumulation,
    all-reduce across processes, fp16 unscaling and clipping, so every rank computes the same scores.
    (W * (g * M) equals W * g here: W is already 0 wherever M is.)
    Use a gradual schedule: at step 0 all scores are 0 and the first ranking would be arbitrary.
    """

    options_cls = MovementOptions
    monotone = False

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, MovementOptions)
        self.lr_scores = options.lr_scores
        self._scores: dict[str, torch.Tensor] = {}  # name -> (out, in) float32, on the weight's device

    def _score(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The score tensor of `name`, created as zeros or moved to `like`'s device when needed."""
        score = self._scores.get(name)
        if score is None:
            score = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        self._scores[name] = score = score.to(like.device)
        return score

    @torch.no_grad()
    def accumulate(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """Add one gradient's movement to the scores of `name`."""
        self._scores[name] = movement_update(self._score(name, grad), weight, grad, self.lr_scores)

    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Accumulate this optimizer step's movement from the final (synchronised, unscaled) gradients."""
        for name, weight in weights.items():
            if weight.grad is not None:
                self.accumulate(name, weight, weight.grad)

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The accumulated scores S (zeros for a weight that has seen no gradient yet)."""
        return {name: self._score(name, w) for name, w in weights.items()}

    def log_metrics(self) -> dict[str, float]:
        """Mean |S| over all targets: how far the scores have moved from their start at 0."""
        if not self._scores:
            return {}
        total = sum(float(s.abs().sum()) for s in self._scores.values())
        return {"movement_score_abs": total / sum(s.numel() for s in self._scores.values())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The scores, keyed `scores.<weight name>`, so a resumed run ranks as an uninterrupted one."""
        return {f"scores.{name}": s for name, s in self._scores.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore scores saved by `state_dict` (moved to each weight's device on first use)."""
        prefix = "scores."
        self._scores = {k[len(prefix) :]: v.float().clone() for k, v in state.items() if k.startswith(prefix)}


@register_method("soft_movement")
class SoftMovementPruning(MovementPruning):
    """Soft movement pruning: keep S > tau while a regulariser lam * sum(sigmoid(S)) lowers the scores.

    Below the target the threshold, not the schedule, sets the sparsity (the schedule only says when to
    re-threshold); once the schedule reaches the target the pruner's exact top-k of S makes the final
    sparsity the requested one. The regulariser step is taken once per optimizer step, so it does not
    depend on gradient accumulation. A pruned weight is 0, so only the regulariser still moves its score
    (down): the threshold sparsity can only grow until the final top-k, which regrows the best at 0.0.
    """

    options_cls = SoftMovementOptions

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, SoftMovementOptions)
        self.lam, self.tau = options.lam, options.tau

    @torch.no_grad()
    def after_optimizer_step(self, weights: Mapping[str, torch.Tensor], lr: float) -> None:
        """The regulariser's step on every score, once per optimizer step."""
        if self.lam > 0:
            for name, w in weights.items():
                self._scores[name] = sigmoid_regulariser_step(self._score(name, w), self.lam, self.lr_scores)

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        """Threshold masks S > tau, whatever the schedule's sparsity (the final top-k is the pruner's)."""
        return threshold_masks(scores, self.tau)

    def log_metrics(self) -> dict[str, float]:
        """Mean |S| and the sparsity the threshold alone would give now."""
        if not self._scores:
            return {}
        below = sum(int((s <= self.tau).sum()) for s in self._scores.values())
        total = sum(s.numel() for s in self._scores.values())
        return {**super().log_metrics(), "threshold_sparsity": below / total}
