"""Reweighted Proximal Pruning (Guo et al. 2019, arXiv:1909.12486): reweighted-L1 prox steps after AdamW."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field

from prunebert.methods.base import Count, MethodOptions, Number, PruneSettings, PruningMethod
from prunebert.methods.magnitude import magnitude_scores
from prunebert.methods.registry import register_method
from prunebert.schedules import Schedule, final_step

if TYPE_CHECKING:
    from prunebert.targets import Target

__all__ = [
    "RPP_SHORTFALL",
    "RPPOptions",
    "ReweightedProximalPruning",
    "magnitude_cutoffs",
    "penalty_per_step",
    "proximal_l1",
    "reweight",
]

#: the hard prune warns when the proximal phase has zeroed less than the target minus this fraction
RPP_SHORTFALL = 0.1


def proximal_l1(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Soft-thresholding sign(w) * max(|w| - threshold, 0): the proximal operator of sum(threshold * |w|)."""
    return torch.sign(w) * torch.clamp(w.abs() - threshold, min=0.0)


def reweight(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Reweighted-L1 coefficients gamma = 1 / (|w| + eps): the smaller a weight, the harder it is pushed."""
    return 1.0 / (w.abs() + eps)


def penalty_per_step(cutoff: float, eps: float, steps: int) -> float:
    """The per-step threshold scale delta (threshold delta * gamma) under which a weight of |w| <= cutoff
    that only the penalty moves reaches zero within `steps` proximal steps; 0 without steps.

    Each step shrinks (|w| + eps)^2 by 2 * delta - delta^2 / (|w| + eps)^2, which takes two steps longer
    than (|w| + eps)^2 / (2 * delta), so delta = ((cutoff + eps)^2 - eps^2) / (2 * max(1, steps - 2)).
    """
    if steps < 1:
        return 0.0
    return ((cutoff + eps) ** 2 - eps**2) / (2 * max(1, steps - 2))


def magnitude_cutoffs(weights: Mapping[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, float]:
    """|w| below which `sparsity` of the entries lie: per matrix (`layer` scope) or over all (`global`)."""

    def kth(values: torch.Tensor) -> float:
        k = min(values.numel(), max(1, round(sparsity * values.numel())))
        return float(values.float().abs().flatten().kthvalue(k).values)

    if scope == "global":
        cut = kth(torch.cat([w.detach().flatten() for w in weights.values()]))
        return dict.fromkeys(weights, cut)
    return {name: kth(w.detach()) for name, w in weights.items()}


class RPPOptions(MethodOptions):
    """Penalty strength `lam`, reweighting offset `eps` and steps between reweightings."""

    #: the per-step threshold is lr * lam * gamma. As d|w|/dt = -lr * lam / (|w| + eps), weights whose
    #: gradient is noise reach zero below |w| ~ sqrt(2 * lam * sum(lr)): 0.01 at lr 5e-5 zeroes ~20-35% of
    #: BERT-like weights (|w| ~ 0.02-0.04) in 100 steps, ~35-65% in 400. None: derived from the target, so
    #: the proximal phase itself reaches it: the threshold of every step is delta * gamma, delta ~
    #: ((w_cut + eps)^2 - eps^2) / (2 T) (`penalty_per_step`; lam_t = delta / lr_t), w_cut the |w| below
    #: which `sparsity` of the weights lie at the first step, T the steps before the hard prune; weights the
    #: task pushes back survive, and the hard prune takes the rest.
    lam: Number | None = Field(
        None,
        gt=0.0,
        description="lambda, the reweighted-L1 penalty (None: derived from the target sparsity so the "
        "proximal phase alone about reaches it; see `penalty_per_step`)",
    )
    #: with lam > eps a zero weight stays zero in the proximal phase (if lr << eps, AdamW moves it by ~lr <
    #: the threshold lr * lam / eps)
    eps: Number = Field(
        1e-3, gt=0.0, description="keeps gamma = 1 / (|w| + eps) finite at w = 0 (Candes et al. 2008)"
    )
    reweight_every: Count = Field(
        1, ge=1, description="optimizer steps between gamma refreshes (1 = every step)"
    )


@register_method("rpp")
class ReweightedProximalPruning(PruningMethod):
    """Reweighted Proximal Pruning (Guo et al. 2019, "Reweighted Proximal Pruning for Large-Scale
    Language Representation", arXiv:1909.12486).

    Minimises loss(w) + lam * sum_i gamma_i * |w_i| by proximal AdamW: after each optimizer step,

        w <- prox(w) = sign(w) * max(|w| - lr * lam * gamma, 0),   gamma_i = 1 / (|w_i| + eps),

    with gamma refreshed from the current weights every `reweight_every` steps. The proximal step sets
    small weights to exactly zero while training continues; the pruner's hard prune (default: one shot at
    70% of training) then keeps the largest |w| at the target sparsity, the proximal phase ends, and the
    mask stays fixed, as the universal pattern is kept in fine-tuning. Guo et al. tune lam per target; by
    default lam is derived from the target (`RPPOptions.lam`), so the hard prune removes little, and a
    proximal phase that ends more than RPP_SHORTFALL below the target is warned about at the hard prune
    (a fixed lam of 0.01 zeroed ~35% before a hard jump to 90% in the methods grid).
    """

    paper: ClassVar[str] = "Guo et al. 2019, arXiv:1909.12486"
    options_cls: ClassVar[type[MethodOptions]] = RPPOptions
    defaults: ClassVar[dict[str, Any]] = {"schedule": "oneshot", "start_fraction": 0.7}

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        if not isinstance(options, RPPOptions):
            raise TypeError(f"rpp needs RPPOptions, got {type(options).__name__}")
        super().__init__(options, seed)
        self.opts = options
        self.gamma: dict[str, torch.Tensor] = {}  # name -> gamma, kept when reweight_every > 1
        self.calls = 0  # proximal steps taken so far
        self.proximal = True  # False once the hard prune has fixed the mask
        self._zeros: list[torch.Tensor] = []  # exact zeros per target after the last proximal step
        self._numel = 0
        self.delta: dict[str, float] = {}  # name -> per-step threshold scale, when lam is derived
        self.target, self.scope, self.prox_steps = 0.0, "layer", 0

    def bind(self, model: torch.nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Remember the target sparsity and scope (a derived lam aims the proximal phase at them)."""
        self.target, self.scope = config.sparsity, config.scope

    def on_start(self, total_steps: int, schedule: Schedule) -> None:
        """Count the proximal steps before the hard prune (a derived lam spreads the penalty over them)."""
        self.prox_steps = final_step(schedule, self.target, total_steps)

    def _thresholds(self, weights: Mapping[str, torch.Tensor], lr: float) -> dict[str, float]:
        """The scale of this step's threshold per target: lr * lam, or the derived delta (sized at the first
        step from the weights then, over the proximal steps left)."""
        if self.opts.lam is not None:
            return dict.fromkeys(weights, lr * self.opts.lam)
        if not self.delta:
            cuts = magnitude_cutoffs(weights, self.target, self.scope)
            left = self.prox_steps - self.calls
            self.delta = {n: penalty_per_step(c, self.opts.eps, left) for n, c in cuts.items()}
        return self.delta

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """|w|: the hard prune keeps the largest survivors of the proximal steps."""
        return {name: magnitude_scores(w) for name, w in weights.items()}

    @torch.no_grad()
    def after_optimizer_step(self, weights: Mapping[str, torch.Tensor], lr: float) -> None:
        """Soft-threshold every target in place by lr * lam * gamma while in the proximal phase."""
        if not self.proximal:
            return
        every, scale = self.opts.reweight_every, self._thresholds(weights, lr)
        for name, w in weights.items():
            if self.calls % every == 0 or name not in self.gamma:
                gamma = reweight(w.detach().float(), self.opts.eps)  # float32, shaped like w
            else:
                gamma = self.gamma[name].to(w.device)  # a loaded state comes on the CPU
            if every > 1:  # kept (and checkpointed) only when a later step reuses it
                self.gamma[name] = gamma
            w.copy_(proximal_l1(w, (scale[name] * gamma).to(w.dtype)))
        self.calls += 1
        self._zeros = [(w == 0).sum() for w in weights.values()]  # summed lazily: no device sync here
        self._numel = sum(w.numel() for w in weights.values())

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """The hard prune to the target ends the proximal phase (gamma is no longer needed); warn if the
        proximal phase had zeroed far less than the prune just removed."""
        if not (final and self.proximal):
            return
        zeroed = self.log_metrics().get("rpp_zero_fraction", 0.0)
        if sparsity - zeroed > RPP_SHORTFALL:
            lam = "derived from the target" if self.opts.lam is None else f"{self.opts.lam:g}"
            warnings.warn(
                f"rpp: the proximal phase zeroed {zeroed:.0%} of the targets (lam {lam}), so the hard prune "
                f"to {sparsity:.0%} removed the other {sparsity - zeroed:.0%} at once: raise lam or leave it "
                "unset, or prune later (pruning.start_fraction)",
                UserWarning,
                stacklevel=2,
            )
        self.proximal = False
        self.gamma = {}

    def log_metrics(self) -> dict[str, float]:
        """`rpp_zero_fraction`: share of exact zeros in the targets after the last proximal step."""
        if not self.proximal or not self._zeros:
            return {}
        return {"rpp_zero_fraction": round(sum(int(z.item()) for z in self._zeros) / self._numel, 4)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Gamma (if reused later), a derived lam's deltas, step counter and phase flag: a resumed run
        continues identically."""
        state = {f"gamma.{name}": g for name, g in self.gamma.items()}
        state.update(
            {f"delta.{name}": torch.tensor(d, dtype=torch.float64) for name, d in self.delta.items()}
        )
        state["calls"] = torch.tensor(self.calls, dtype=torch.int64)
        state["proximal"] = torch.tensor(self.proximal)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        self.calls = int(state["calls"].item())
        self.proximal = bool(state["proximal"].item())
        self.gamma = {k.removeprefix("gamma."): v.clone() for k, v in state.items() if k.startswith("gamma.")}
        self.delta = {k.removeprefix("delta."): float(v) for k, v in state.items() if k.startswith("delta.")}
