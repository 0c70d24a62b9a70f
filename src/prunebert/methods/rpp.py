"""Reweighted Proximal Pruning (Guo et al. 2019, arXiv:1909.12486): reweighted-L1 prox steps after AdamW."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from prunebert.methods.base import MethodOptions, PruningMethod
from prunebert.methods.magnitude import magnitude_scores
from prunebert.methods.registry import register_method

__all__ = ["RPPOptions", "ReweightedProximalPruning", "proximal_l1", "reweight"]


def proximal_l1(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Soft-thresholding sign(w) * max(|w| - threshold, 0): the proximal operator of sum(threshold * |w|)."""
    return torch.sign(w) * torch.clamp(w.abs() - threshold, min=0.0)


def reweight(w: torch.Tensor, eps: float) -> torch.Tensor:
    """Reweighted-L1 coefficients gamma = 1 / (|w| + eps): the smaller a weight, the harder it is pushed."""
    return 1.0 / (w.abs() + eps)


def _positive(name: str, value: object) -> float:
    """`value` as a finite float > 0; YAML reads `1e-3` (no dot) as a string, so strings are parsed."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (number > 0 and math.isfinite(number)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


@dataclass(frozen=True)
class RPPOptions(MethodOptions):
    """Penalty strength `lam`, reweighting offset `eps` and steps between reweightings."""

    #: lambda; the per-step threshold is lr * lam * gamma. As d|w|/dt = -lr * lam / (|w| + eps), weights
    #: whose gradient is noise reach zero below |w| ~ sqrt(2 * lam * sum(lr)): 0.01 at lr 5e-5 zeroes
    #: ~20-35% of BERT-like weights (|w| ~ 0.02-0.04) in 100 steps, ~35-65% in 400. For long runs
    #: (pre-training) lower it: lam ~ w_cut ** 2 / (2 * sum of lr until the hard prune).
    lam: float = 0.01
    #: keeps gamma finite at w = 0 (Candès et al. 2008's reweighted L1); with lam > eps a zero weight
    #: stays zero in the proximal phase (if lr << eps, AdamW moves it by ~lr < the threshold lr * lam / eps)
    eps: float = 1e-3
    #: optimizer steps between gamma refreshes (1 = every step)
    reweight_every: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _positive("lam", self.lam))
        object.__setattr__(self, "eps", _positive("eps", self.eps))
        every = self.reweight_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"reweight_every must be an integer >= 1, got {every!r}")


@register_method("rpp")
class ReweightedProximalPruning(PruningMethod):
    """Reweighted Proximal Pruning (Guo et al. 2019, "Reweighted Proximal Pruning for Large-Scale
    Language Representation", arXiv:1909.12486).

    Minimises loss(w) + lam * sum_i gamma_i * |w_i| by proximal AdamW: after each optimizer step,

        w <- prox(w) = sign(w) * max(|w| - lr * lam * gamma, 0),   gamma_i = 1 / (|w_i| + eps),

    with gamma refreshed from the current weights every `reweight_every` steps. The proximal step sets
    small weights to exactly zero while training continues; the pruner's hard prune (default: one shot at
    70% of training) then keeps the largest |w| at the target sparsity, the proximal phase ends, and the
    mask stays fixed, as the universal pattern is kept in fine-tuning.
    """

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

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """|w|: the hard prune keeps the largest survivors of the proximal steps."""
        return {name: magnitude_scores(w) for name, w in weights.items()}

    @torch.no_grad()
    def after_optimizer_step(self, weights: Mapping[str, torch.Tensor], lr: float) -> None:
        """Soft-threshold every target in place by lr * lam * gamma while in the proximal phase."""
        if not self.proximal:
            return
        every = self.opts.reweight_every
        for name, w in weights.items():
            if self.calls % every == 0 or name not in self.gamma:
                gamma = reweight(w.detach().float(), self.opts.eps)  # float32, shaped like w
            else:
                gamma = self.gamma[name].to(w.device)  # a loaded state comes on the CPU
            if every > 1:  # kept (and checkpointed) only when a later step reuses it
                self.gamma[name] = gamma
            w.copy_(proximal_l1(w, (lr * self.opts.lam * gamma).to(w.dtype)))
        self.calls += 1
        self._zeros = [(w == 0).sum() for w in weights.values()]  # summed lazily: no device sync here
        self._numel = sum(w.numel() for w in weights.values())

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """The hard prune to the target ends the proximal phase; gamma is no longer needed."""
        if final:
            self.proximal = False
            self.gamma = {}

    def log_metrics(self) -> dict[str, float]:
        """`rpp_zero_fraction`: share of exact zeros in the targets after the last proximal step."""
        if not self.proximal or not self._zeros:
            return {}
        return {"rpp_zero_fraction": round(sum(int(z.item()) for z in self._zeros) / self._numel, 4)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Gamma (if reused later), step counter and phase flag: a resumed run continues identically."""
        state = {f"gamma.{name}": g for name, g in self.gamma.items()}
        state["calls"] = torch.tensor(self.calls, dtype=torch.int64)
        state["proximal"] = torch.tensor(self.proximal)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        self.calls = int(state["calls"].item())
        self.proximal = bool(state["proximal"].item())
        self.gamma = {k.removeprefix("gamma."): v.clone() for k, v in state.items() if k.startswith("gamma.")}
