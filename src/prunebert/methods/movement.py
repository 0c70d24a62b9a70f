"""Movement pruning: keep the weights moving away from zero (Sanh, Wolf & Rush 2020, arXiv:2005.07683).

Magnitude pruning keeps large weights; movement pruning keeps weights that fine-tuning pushes away from
zero. Each target weight W gets an importance score S (zeros at the start) that accumulates the first-order
movement of every optimizer step, straight-through the mask, for pruned and kept entries alike:

    S <- S - lr_scores * W * dL/dW'        (W' = W * M, the effective weight the forward pass used)

Hard movement keeps the top-k of S (k from the schedule); soft movement keeps S > tau and lets a
regulariser lam * sum(sigmoid(S)) drive the scores, hence the sparsity, down.

The paper keeps the dense W behind the mask; here the model holds W' (pruned entries exactly +0.0, the
optimizer never moves them) and the method keeps a float32 "shadow" of each pruned entry's value from the
moment it was pruned (0 where kept), so W = W' + shadow. Scores use that dense W and the unmasked
gradient dL/dW' (the pruner hands it over before masking it: `needs_pruned_gradients`), and a weight that
regrows comes back with its old value, as in the paper (where dL/dW = dL/dW' * M leaves it unchanged).

Memory: a float32 score and a float32 shadow per target weight, 8 bytes (about 680 MB for the 85M encoder
weights of BERT-base), both saved in checkpoints; the shadow is allocated at the first mask update and
dropped at bake.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from prunebert.methods.base import MethodOptions, PruningMethod
from prunebert.methods.registry import register_method

__all__ = [
    "MovementOptions",
    "MovementPruning",
    "SoftMovementOptions",
    "SoftMovementPruning",
    "exchange_shadow",
    "movement_update",
    "sigmoid_regulariser_step",
    "threshold_masks",
]


def movement_update(
    scores: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, lr_scores: float = 1.0
) -> torch.Tensor:
    """S - lr_scores * W * dL/dW' in float32: scores rise for weights moving away from zero."""
    return scores - lr_scores * weight.detach().float() * grad.detach().float()


def exchange_shadow(
    weight: torch.Tensor, shadow: torch.Tensor, old: torch.Tensor, new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, shadow) across a mask change old -> new: entries pruned now move their value into the
    shadow, entries revived now take theirs back from it; the shadow ends 0 wherever `new` keeps."""
    pruned, revived = old & ~new, new & ~old
    restored = torch.where(revived, shadow.to(weight.dtype), weight)
    shadow = torch.where(pruned, weight.detach().float(), shadow.masked_fill(revived, 0.0))
    return restored, shadow


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

    Not monotone: a pruned weight comes back, with the value it had when pruned, once its score
    overtakes a kept one; pruned weights' scores keep moving with W * dL/dW' (straight-through), so
    early, noisy rankings are corrected. Scores are read from `weight.grad` once per optimizer step,
    after accumulation, all-reduce across processes, fp16 unscaling and clipping, so every rank computes
    the same scores; the pruner then masks the gradients before the optimizer step. Gradient clipping
    therefore sees the pruned entries' gradients too (the paper's code clips the scores' gradients,
    W * dL/dW', together with the weights').
    """

    options_cls = MovementOptions
    monotone = False
    needs_pruned_gradients = True
    #: Sanh et al.'s cubic schedule: no pruning for the first ~10% of training (their SQuAD runs: 1 of
    #: 10 epochs), while the scores learn from real gradients, and the final masks fixed for the last 20%
    defaults: ClassVar[dict[str, Any]] = {"start_fraction": 0.1, "end_fraction": 0.8}

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, MovementOptions)
        self.lr_scores = options.lr_scores
        self._scores: dict[str, torch.Tensor] = {}  # name -> (out, in) float32, on the weight's device
        self._shadow: dict[str, torch.Tensor] = {}  # name -> (out, in) float32: pruned values, 0 if kept

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

    def dense(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The paper's dense W, exactly: the model's W' (+0.0 wherever pruned: the pruner's invariant)
        plus the shadow (the pruned values, 0 wherever kept)."""
        shadow = self._shadow.get(name)
        if shadow is None:
            return weight
        self._shadow[name] = shadow = shadow.to(weight.device)
        return weight.detach().float() + shadow

    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Accumulate this optimizer step's movement from the final (synchronised, unscaled) gradients,
        which still hold dL/dW' for pruned entries (`needs_pruned_gradients`)."""
        for name, weight in weights.items():
            if weight.grad is not None:
                self.accumulate(name, self.dense(name, weight), weight.grad)

    @torch.no_grad()
    def on_masks_changing(
        self,
        old: Mapping[str, torch.Tensor],
        new: Mapping[str, torch.Tensor],
        weights: Mapping[str, torch.Tensor],
    ) -> None:
        """Keep the values of entries being pruned; give revived entries their values back."""
        for name, weight in weights.items():
            before, after = old[name].to(weight.device), new[name].to(weight.device)
            if torch.equal(before, after):
                continue
            shadow = self._shadow.get(name)
            if shadow is None:
                shadow = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            restored, self._shadow[name] = exchange_shadow(weight, shadow.to(weight.device), before, after)
            weight.copy_(restored)

    def finalize(self) -> None:
        """Baking writes the zeros for good: the pruned values can no longer come back."""
        self._shadow.clear()

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
        """Scores and shadows, keyed `scores.<weight name>` and `shadow.<weight name>`, so a resumed run
        ranks and regrows as an uninterrupted one."""
        return {
            **{f"scores.{name}": s for name, s in self._scores.items()},
            **{f"shadow.{name}": s for name, s in self._shadow.items()},
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved (moved to each weight's device on first use); a checkpoint
        without shadows (written before they existed) regrows its pruned weights at 0.0."""
        self._scores = _prefixed(state, "scores.")
        self._shadow = _prefixed(state, "shadow.")


@register_method("soft_movement")
class SoftMovementPruning(MovementPruning):
    """Soft movement pruning: keep S > tau while a regulariser lam * sum(sigmoid(S)) lowers the scores.

    Below the target the threshold, not the schedule, sets the sparsity (the schedule only says when to
    re-threshold); once the schedule reaches the target the pruner's exact top-k of S makes the final
    sparsity the requested one. The regulariser step is taken once per optimizer step, so it does not
    depend on gradient accumulation. Pruned weights' scores keep moving with W * dL/dW' (W their value
    when pruned) as well as with the regulariser, so an entry can cross tau either way: the threshold
    sparsity rises and falls between re-thresholds, and a weight that comes back (then or at the final
    top-k) returns with its old value.
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


def _prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The float32 copies of `state`'s entries under `prefix`, keyed by what follows it."""
    return {k[len(prefix) :]: v.float().clone() for k, v in state.items() if k.startswith(prefix)}
