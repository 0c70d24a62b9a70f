"""Movement pruning: keep the weights moving away from zero (Sanh, Wolf & Rush 2020, arXiv:2005.07683).

Magnitude pruning keeps large weights; movement pruning keeps weights that fine-tuning pushes away from
zero. Each target weight W gets an importance score S (zeros at the start), trained on the straight-through
gradient dL/dS = W * dL/dW' (W' = W * M, the effective weight the forward pass used) of every optimizer
step, for pruned and kept entries alike:

    adam (default, the authors'):  S <- S - lr_scores * Adam(W * dL/dW'),  lr_scores 1e-2
    sgd (the summed movement):     S <- S - lr_scores * W * dL/dW',        lr_scores 1.0

Hard movement keeps the top-k of S (k from the schedule); soft movement keeps sigmoid(S) > tau_t and adds
the gradient of lam_t * mean over matrices of mean(sigmoid(S)) to dL/dS (`SoftMovementPruning`).

The paper keeps the dense W behind the mask; here the model holds W' (pruned entries exactly +0.0, the
optimizer never moves them) and the method keeps a float32 "shadow" of each pruned entry's value from the
moment it was pruned (0 where kept), so W = W' + shadow. Scores use that dense W and the unmasked
gradient dL/dW' (the pruner hands it over before masking it: `needs_pruned_gradients`), and a weight that
regrows comes back with its old value, as in the paper (where dL/dW = dL/dW' * M leaves it unchanged).

Memory per target weight, all float32 and saved in checkpoints: the score and the shadow (allocated at the
first mask update, dropped at bake), plus Adam's two moments with `score_optimizer: adam`: 16 bytes
(about 1.4 GB for the 85M encoder weights of BERT-base).

Budget: `benchmarks/movement_signal.py` measured on minilm-l6 / rotten-tomatoes that at the methods grid's
250 steps the scores are mostly noise (split-half rank correlation 0.07, top-50% masks overlap magnitude's
at chance) and that they need about `MOVEMENT_MIN_STEPS` steps before the final mask to become reliable
(Sanh et al. ran ~10^5); `on_start` warns below that, from `Pruner.start`, so the CLI and the Python API
both see it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from prunebert.methods.base import MethodOptions, Number, PruneSettings, PruningMethod
from prunebert.methods.movement_math import (
    adam_score_step,
    ramped,
    score_reach,
    sigmoid_l1_grad,
    sigmoid_threshold_masks,
)
from prunebert.methods.registry import register_method
from prunebert.schedules import Fixed, Schedule, final_step

if TYPE_CHECKING:
    from prunebert.targets import Target

__all__ = [
    "MOVEMENT_MIN_STEPS",
    "SOFT_REACH",
    "MovementOptions",
    "MovementPruning",
    "SoftMovementOptions",
    "SoftMovementPruning",
    "exchange_shadow",
    "movement_update",
]

#: optimizer steps of score updates before the final mask below which movement warns. Measured on
#: minilm-l6 / rotten-tomatoes at the methods grid's budget (benchmarks/results/movement_signal.json):
#: the split-half rank correlation of Adam scores (median over the 36 matrices) is 0.23 at step 36, 0.11
#: at 120, 0.07 at 250, and their top-50% masks overlap magnitude's at 0.34-0.35 (chance 1/3);
#: Spearman-Brown from step 250 puts split-half reliability 0.5 at ~3,200 steps (summed scores: ~6,200).
#: The correlation falls with steps, so this is a floor, not a guarantee.
MOVEMENT_MIN_STEPS = 3000
#: soft movement's default lr_scores lets a score pushed steadily down cross the final threshold this many
#: times over during the steps before the final mask (never slower than the authors' 1e-2)
SOFT_REACH = 4.0
_DEFAULT_LR = {"adam": 1e-2, "sgd": 1.0}


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


class MovementOptions(MethodOptions):
    """How the movement scores learn."""

    score_optimizer: Literal["adam", "sgd"] = Field(
        "adam",
        description="`adam` (the authors' own optimizer for the scores) or `sgd` "
        "(S -= lr_scores * W * dL/dW')",
    )
    lr_scores: Number | None = Field(
        None,
        gt=0.0,
        description="the scores' step size (None: 1e-2 with adam, 1.0 with sgd; soft movement with adam: the "
        "larger of 1e-2 and SOFT_REACH * |logit(threshold)| / (steps before the final mask)); top-k masks "
        "do not depend on it",
    )


class SoftMovementOptions(MovementOptions):
    """Movement's options plus the threshold and regulariser; both ramp from 0 on the pruning schedule."""

    threshold: Number = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="final tau of the masks sigmoid(S) > tau (it bounds sigmoid(S); the authors' 0.1)",
    )
    lam: Number = Field(
        100.0,
        ge=0.0,
        description="final weight of the regulariser lam * mean over matrices of mean(sigmoid(S)), in loss "
        "units",
    )


@register_method("movement")
class MovementPruning(PruningMethod):
    """Hard movement pruning: top-k of the trained movement scores, re-ranked at every mask update.

    Not monotone: a pruned weight comes back, with the value it had when pruned, once its score
    overtakes a kept one; pruned weights' scores keep moving with W * dL/dW' (straight-through), so
    early, noisy rankings are corrected. Scores are read from `weight.grad` once per optimizer step,
    after accumulation, all-reduce across processes, fp16 unscaling and clipping, so every rank computes
    the same scores; the pruner then masks the gradients before the optimizer step. Gradient clipping
    therefore sees the pruned entries' gradients too (the paper's code clips the scores' gradients,
    W * dL/dW', together with the weights'). The authors' scores also follow the weights' learning-rate
    schedule; here lr_scores is constant (a top-k ranking does not depend on it).
    """

    paper: ClassVar[str] = "Sanh, Wolf & Rush 2020, arXiv:2005.07683"
    options_cls = MovementOptions
    monotone = False
    needs_pruned_gradients = True
    #: Sanh et al.'s cubic schedule: no pruning for the first ~10% of training (their SQuAD runs: 1 of
    #: 10 epochs), while the scores learn from real gradients, and the final masks fixed for the last 20%
    defaults: ClassVar[dict[str, Any]] = {"start_fraction": 0.1, "end_fraction": 0.8}

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, MovementOptions)
        self.optimizer = options.score_optimizer
        self.lr_scores = options.lr_scores or _DEFAULT_LR[self.optimizer]
        self._scores: dict[str, torch.Tensor] = {}  # name -> (out, in) float32, on the weight's device
        self._shadow: dict[str, torch.Tensor] = {}  # name -> (out, in) float32: pruned values, 0 if kept
        self._moments: dict[str, torch.Tensor] = {}  # "m.<name>" / "v.<name>": Adam's, float32
        self.steps = 0  # score updates so far (Adam's bias correction)
        self.target, self.matrices = 0.0, 1

    def bind(self, model: torch.nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Remember the target sparsity (soft movement ramps its threshold towards it) and the number of
        target matrices (its regulariser is a mean over them)."""
        self.target, self.matrices = config.sparsity, max(1, len(targets))

    def on_start(self, total_steps: int, schedule: Schedule) -> None:
        """Warn when the final mask comes after fewer score updates than reliable scores need."""
        if isinstance(schedule, Fixed):
            return
        steps = final_step(schedule, self.target, total_steps)
        if steps < MOVEMENT_MIN_STEPS:
            warnings.warn(
                f"{self.name}: the final mask is chosen after {steps} optimizer steps of score updates, but "
                f"movement scores need about {MOVEMENT_MIN_STEPS} to carry signal (benchmarks/"
                "movement_signal.py: at 250 steps they are mostly noise and overlap magnitude's masks at "
                "chance); below that "
                "magnitude pruning does better: use it, or train longer",
                UserWarning,
                stacklevel=3,
            )

    def _zeros(self, store: dict[str, torch.Tensor], key: str, like: torch.Tensor) -> torch.Tensor:
        """store[key], created as float32 zeros or moved to `like`'s device when needed."""
        value = store.get(key)
        if value is None:
            value = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        store[key] = value = value.to(like.device)
        return value

    def _score(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return self._zeros(self._scores, name, like)

    def score_grad(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """dL/dS of one matrix: W * dL/dW' (soft movement adds its regulariser's gradient)."""
        return weight.detach().float() * grad.detach().float()

    @torch.no_grad()
    def accumulate(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """One score update of `name` from one gradient (`self.steps` counts the update it belongs to)."""
        score = self._score(name, grad)
        if self.optimizer == "sgd":
            g = self.score_grad(name, weight, grad)
            self._scores[name] = score - self.lr_scores * g
            return
        m, v = self._zeros(self._moments, f"m.{name}", grad), self._zeros(self._moments, f"v.{name}", grad)
        step = max(1, self.steps)
        g = self.score_grad(name, weight, grad)
        self._scores[name], self._moments[f"m.{name}"], self._moments[f"v.{name}"] = adam_score_step(
            score, m, v, g, step, self.lr_scores
        )

    def dense(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The paper's dense W, exactly: the model's W' (+0.0 wherever pruned: the pruner's invariant)
        plus the shadow (the pruned values, 0 wherever kept)."""
        shadow = self._shadow.get(name)
        if shadow is None:
            return weight
        self._shadow[name] = shadow = shadow.to(weight.device)
        return weight.detach().float() + shadow

    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Update the scores from the final (synchronised, unscaled) gradients, which still hold dL/dW'
        for pruned entries (`needs_pruned_gradients`): one score step per optimizer step."""
        self.steps += 1
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
            shadow = self._zeros(self._shadow, name, weight)
            restored, self._shadow[name] = exchange_shadow(weight, shadow, before, after)
            weight.copy_(restored)

    def finalize(self) -> None:
        """Baking writes the zeros for good: the pruned values can no longer come back."""
        self._shadow.clear()

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trained scores S (zeros for a weight that has seen no gradient yet)."""
        return {name: self._score(name, w) for name, w in weights.items()}

    def log_metrics(self) -> dict[str, float]:
        """Mean |S| over all targets: how far the scores have moved from their start at 0."""
        if not self._scores:
            return {}
        total = sum(float(s.abs().sum()) for s in self._scores.values())
        return {"movement_score_abs": total / sum(s.numel() for s in self._scores.values())}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Scores and shadows (`scores.`, `shadow.` + weight name), with adam its moments (`adam_m.`,
        `adam_v.`) and update count, so a resumed run ranks and regrows as an uninterrupted one."""
        state = {f"scores.{name}": s for name, s in self._scores.items()}
        state.update({f"shadow.{name}": s for name, s in self._shadow.items()})
        if self.optimizer == "adam":
            state.update({f"adam_{key}": value for key, value in self._moments.items()})
            state["score_steps"] = torch.tensor(self.steps, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved (moved to each weight's device on first use); a checkpoint
        without shadows (written before they existed) regrows its pruned weights at 0.0."""
        self._scores = _prefixed(state, "scores.")
        self._shadow = _prefixed(state, "shadow.")
        self._moments = _prefixed(state, "adam_")
        self.steps = int(state["score_steps"].item()) if "score_steps" in state else 0


@register_method("soft_movement")
class SoftMovementPruning(MovementPruning):
    """Soft movement pruning (Sanh et al.'s `sigmoied_threshold` with `regularization l1`): masks
    sigmoid(S) > tau_t, and dL/dS gains the gradient of lam_t * mean over matrices of mean(sigmoid(S)).

    tau_t = threshold * s_t / s and lam_t = lam * s_t / s, with s_t the schedule's sparsity and s the
    recipe's: on the default cubic schedule, the authors' cubic ramp 0 -> threshold with its warm-up and
    cool-down (`schedule_threshold`, lam_t = lam * tau_t / tau). The regulariser's gradient is added to the
    scores' gradient directly, once per optimizer step, before Adam: the scores are not Trainer parameters,
    and it is exactly what the loss term would contribute to dL/dS (with gradient accumulation, lam / G on
    each of G micro-batches sums to lam). The recipe's sparsity only shapes the ramp: the achieved sparsity
    is what the threshold gives (`exact_sparsity = False`); lam sets it, and a warning says where it ended.
    """

    options_cls = SoftMovementOptions
    exact_sparsity = False

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, SoftMovementOptions)
        self.lam, self.threshold = options.lam, options.threshold
        self.fixed_lr = options.lr_scores is not None or self.optimizer == "sgd"
        self.tau = 0.0  # the threshold of the last mask update (lam_t follows it)
        self.achieved = 0.0  # the sparsity the last threshold gave

    def on_start(self, total_steps: int, schedule: Schedule) -> None:
        """Size the default lr_scores to the run, then warn (short run; a threshold scores cannot reach)."""
        super().on_start(total_steps, schedule)
        steps = max(1, final_step(schedule, self.target, total_steps))
        if not self.fixed_lr:
            self.lr_scores = max(_DEFAULT_LR["adam"], SOFT_REACH / score_reach(1.0, steps, self.threshold))
        reach = score_reach(self.lr_scores, steps, self.threshold)
        if self.optimizer == "adam" and reach < 1 and not isinstance(schedule, Fixed):
            warnings.warn(
                f"soft_movement: lr_scores {self.lr_scores:g} over {steps} steps cannot bring a score from 0 "
                f"to logit({self.threshold:g}); nothing will be pruned: raise lr_scores or leave it unset",
                UserWarning,
                stacklevel=3,
            )

    def score_grad(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """W * dL/dW' plus the regulariser's gradient at lam_t."""
        g = super().score_grad(name, weight, grad)
        lam_t = self.lam * self.tau / self.threshold
        if lam_t > 0:
            g = g + sigmoid_l1_grad(self._score(name, grad), lam_t, self.matrices)
        return g

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        """sigmoid(S) > tau_t for the schedule's `sparsity`, whatever sparsity that gives."""
        masks = sigmoid_threshold_masks(scores, ramped(self.threshold, sparsity, self.target))
        kept = sum(int(m.sum()) for m in masks.values())
        self.achieved = 1.0 - kept / max(1, sum(m.numel() for m in masks.values()))
        return masks

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """Move tau_t (and with it lam_t) to this update's value; say where the final threshold ended."""
        self.tau = ramped(self.threshold, sparsity, self.target)
        if final and abs(self.achieved - self.target) > 0.01:
            warnings.warn(
                f"soft_movement: the final threshold sigmoid(S) > {self.threshold:g} gives "
                f"{self.achieved:.1%} sparsity, not the {self.target:.0%} asked (soft movement's sparsity is "
                "set by lam: raise it for more, lower it for less)",
                UserWarning,
                stacklevel=2,
            )

    def log_metrics(self) -> dict[str, float]:
        """Mean |S|, the current threshold and the sparsity it alone would give now."""
        if not self._scores:
            return {}
        kept = sum(int(m.sum()) for m in sigmoid_threshold_masks(self._scores, self.tau).values())
        total = sum(s.numel() for s in self._scores.values())
        return {**super().log_metrics(), "threshold": self.tau, "threshold_sparsity": 1.0 - kept / total}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Movement's state plus the current threshold tau_t."""
        state = super().state_dict()
        state["tau"] = torch.tensor(self.tau, dtype=torch.float64)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` saved."""
        super().load_state_dict(state)
        self.tau = float(state["tau"].item()) if "tau" in state else 0.0


def _prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The float32 copies of `state`'s entries under `prefix`, keyed by what follows it."""
    return {k[len(prefix) :]: v.float().clone() for k, v in state.items() if k.startswith(prefix)}
