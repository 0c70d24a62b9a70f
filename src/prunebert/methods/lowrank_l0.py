"""Low-rank pruning with learned L0 gates held at the target by an augmented Lagrangian (FLOP).

Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models" (EMNLP 2020, arXiv:1910.04732),
the full method of which `lowrank` implements the factorisation only. Every target Linear becomes a
`prunebert.transforms.lowrank.LowRankLinear`, W = P diag(g) Q from its SVD (as `lowrank`), and each rank-1
component k of target j gets a Hard Concrete gate z_jk (`prunebert.methods.gates`: Louizos et al.'s
beta 2/3, gamma -0.1, zeta 1.1) that multiplies g_jk in the forward: y = P ((g * z) * (Q x)) + b, a
fresh sample per training forward, the deterministic gate in evaluation.

As implemented, with P_jk = P(z_jk != 0) = sigmoid(log_alpha_jk - beta log(-gamma / zeta)), m_jk = 1 for a
component the masks keep (g_jk != 0, else 0: a masked component counts as removed) and an (out_j x in_j)
target of rank r_j, whose component carries out_j + in_j parameters (p_k and q_k):

    s_hat = 1 - sum_j (out_j + in_j) sum_k m_jk P_jk / sum_j (out_j + in_j) r_j    expected sparsity
    t     = sparsity * min(1, n / warmup_steps)   (n: this optimizer step, from 1; t = sparsity if 0)
    objective = loss + lambda1 (s_hat - t) + lambda2 (s_hat - t)^2

and once per optimizer step, after the model's backward (simultaneous descent-ascent, both gradients
taken at the same point; d/dlog_a: with respect to log_alpha):

    log_alpha <- Adam(lr_gates) along dloss/dlog_a + (lambda1 + 2 lambda2 (s_hat - t)) ds_hat/dlog_a
    lambda1   <- lambda1 + lr_lambda (s_hat - t)     (gradient ascent: d objective / d lambda1)
    lambda2   <- lambda2 + lr_lambda (s_hat - t)^2   (ascent too, so lambda2 only grows)

The model's optimizer trains P, g and Q on the loss; the log_alpha live outside the model (as `gates`'s),
take their task gradient from the model's backward (averaged over processes) and the Lagrangian term's
by autograd of s_hat, and get their own Adam step. Choices beyond the paper's text: the lambdas take
plain gradient ascent (the authors' code uses Adam with a negated step size); the warmup is counted in
optimizer steps (as the code's `pruning_warmup_steps`: methods are not told the run's length); the gates
start at log_alpha `init` 3.0, where every evaluation gate is exactly 1, so the factorised model first
computes what the dense one did.

The hard cut is the pruner's (default `oneshot` at 70% of training, `scope: global`, so the learned
allocation across matrices stands): it ranks components by log_alpha and removes the round(sparsity x N)
least open, exactly the target fraction of components. Then every kept g_k is multiplied by its
evaluation gate and the gating is removed, so the plain factorised model computes what the gated one did
in evaluation, and `prunebert slim` treats it like any `lowrank` result. Note that the pruner's knob
counts components while s_hat weights them by out + in: the two agree when every target has the same
shape (or with `scope: layer`, which cuts every matrix to the same fraction but overrides the learned
allocation); otherwise the gates held near t may close a slightly different count than the cut removes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from prunebert.methods.base import Count, MethodOptions, Number, PruneSettings
from prunebert.methods.gates import (
    GatedMethod,
    LearnedGateOptions,
    hard_concrete,
    open_probability,
)
from prunebert.methods.lowrank import LowRankPruning
from prunebert.methods.registry import register_method
from prunebert.targets import Target
from prunebert.transforms.lowrank import LowRankLinear

__all__ = [
    "LowRankL0Options",
    "LowRankL0Pruning",
    "expected_sparsity",
    "lagrangian_gradients",
    "lagrangian_term",
    "target_at",
]


# -- the maths -------------------------------------------------------------------------------------------
def expected_sparsity(
    log_alpha: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    kept: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """s_hat: 1 - expected parameters kept / all, component k of target j carrying widths[j] = out + in.

    Differentiable in log_alpha; `kept` (bool, like log_alpha) marks the components the masks keep.
    """
    expected = []
    for key, alpha in log_alpha.items():
        probability = open_probability(alpha)
        if kept is not None:
            probability = probability * kept[key].to(probability)
        expected.append(widths[key] * probability.sum())
    total = sum(widths[key] * alpha.numel() for key, alpha in log_alpha.items())
    return 1.0 - torch.stack(expected).sum() / total


def lagrangian_term(s_hat: torch.Tensor, target: float, lambdas: torch.Tensor) -> torch.Tensor:
    """lambda1 (s_hat - t) + lambda2 (s_hat - t)^2, lambdas = (lambda1, lambda2)."""
    gap = s_hat - target
    return lambdas[0] * gap + lambdas[1] * gap.square()


def lagrangian_gradients(
    log_alpha: Mapping[str, torch.Tensor],
    widths: Mapping[str, int],
    target: float,
    lambdas: torch.Tensor,
    kept: Mapping[str, torch.Tensor] | None = None,
) -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    """(s_hat, d term / d log_alpha by key, d term / d (lambda1, lambda2)) of `lagrangian_term`, by autograd.

    The gates descend the first gradient, the lambdas ascend the second: (s_hat - t, (s_hat - t)^2).
    """
    with torch.enable_grad():
        alphas = {key: alpha.detach().requires_grad_() for key, alpha in log_alpha.items()}
        s_hat = expected_sparsity(alphas, widths, kept)
        lam = lambdas.detach().to(s_hat).requires_grad_()
        *gate_grads, lambda_grads = torch.autograd.grad(
            lagrangian_term(s_hat, target, lam), [*alphas.values(), lam]
        )
    return float(s_hat.detach()), dict(zip(alphas, gate_grads, strict=True)), lambda_grads.to(lambdas)


def target_at(sparsity: float, step: int, warmup_steps: int) -> float:
    """t at optimizer step `step` (from 1): linear from 0 to `sparsity` over `warmup_steps`, then held."""
    return sparsity if warmup_steps == 0 else sparsity * min(1.0, step / warmup_steps)


# -- the method ------------------------------------------------------------------------------------------
class LowRankL0Options(LearnedGateOptions):
    """The learned gates' options plus the augmented Lagrangian's."""

    lr_lambda: Number = Field(1.0, gt=0.0, description="ascent step size on the lambdas")
    warmup_steps: Count = Field(
        0, ge=0, description="optimizer steps over which the target t rises from 0 (0: none)"
    )


@register_method("lowrank_l0")
class LowRankL0Pruning(GatedMethod, LowRankPruning):
    """Rank-1 components gated by Hard Concrete gates, their expected sparsity held at the target by an
    augmented Lagrangian; the least open components are cut (Wang, Wohlwend & Lei 2019)."""

    paper: ClassVar[str] = "Wang, Wohlwend & Lei 2019 (FLOP), arXiv:1910.04732"
    options_cls: ClassVar[type[MethodOptions]] = LowRankL0Options
    defaults: ClassVar[dict[str, Any]] = {"schedule": "oneshot", "start_fraction": 0.7, "scope": "global"}

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, LowRankL0Options)
        self.opts = options  # self.gates: the target's weight key -> (r,) gates
        self.widths: dict[str, int] = {}  # the target's weight key -> out + in
        self.lambdas = torch.zeros(2, dtype=torch.float64)  # (lambda1, lambda2)
        self.sparsity = 0.0  # the final target, from the pruning config
        self.target = 0.0  # t and s_hat at the last gate step (logged)
        self.expected = 0.0

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Factorise the targets (as `lowrank`) and gate every component of each."""
        super().bind(model, targets, config)
        self.sparsity = config.sparsity
        for name, module in self.modules.items():
            self.widths[name] = module.out_features + module.in_features
            self.gates.add(name, module.weight.numel(), module.weight.device)
            module.gate = partial(self._gate, name)

    def _gate(self, key: str, module: LowRankLinear) -> torch.Tensor:
        return self.gates.sample(key, module.weight.device, module.training).to(module.weight.dtype)

    @torch.no_grad()
    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Gates down the objective (task gradient + the Lagrangian term's), lambdas up it."""
        if not self.gated:
            return
        task = self.gates.task_gradients()
        self.target = target_at(self.sparsity, self.gates.steps + 1, self.opts.warmup_steps)
        kept = {name: weights[name].detach() != 0 for name in self.modules}  # masked g are exactly 0
        self.expected, term, lambda_grads = lagrangian_gradients(
            self.gates.log_alpha, self.widths, self.target, self.lambdas, kept
        )
        self.gates.step({key: grad + term[key] for key, grad in task.items()})
        self.lambdas += self.opts.lr_lambda * lambda_grads

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """log_alpha: the more open a component's gate, the more it is kept. (r,) per target"""
        return {name: self.gates.log_alpha[name].detach().to(g.device) for name, g in weights.items()}

    def _fold(self) -> None:
        """Multiply every g by its evaluation gates."""
        for name, module in self.modules.items():
            z = hard_concrete(self.gates.get(name, module.weight.device).detach())
            module.weight.mul_(z.to(module.weight.dtype))

    def _ungate(self) -> None:
        for module in self.modules.values():
            module.gate = None

    def log_metrics(self) -> dict[str, float]:
        """`lowrank_weights`, and while gating s_hat (`l0_expected_sparsity`), t and the two lambdas."""
        metrics = super().log_metrics()
        if self.gated:
            lambda1, lambda2 = self.lambdas.tolist()
            values = {"expected_sparsity": self.expected, "target": self.target}
            values |= {"lambda1": lambda1, "lambda2": lambda2}
            metrics.update({f"l0_{key}": round(value, 4) for key, value in values.items()})
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Gates, their Adam moments and step count, whether they are folded, and the lambdas."""
        return {**super().state_dict(), "lambdas": self.lambdas.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        self.lambdas = state["lambdas"].to(torch.float64).clone()
