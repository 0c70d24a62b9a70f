"""Learned gates: Hard Concrete gates with an L0 penalty choose the heads to keep (Voita et al. 2019).

Each head (or FFN neuron, if FFN roles are targeted) gets a stochastic gate z in [0, 1] on its output,
drawn from the Hard Concrete distribution of Louizos, Welling & Kingma 2018 (arXiv:1712.01312):

    u ~ U(0, 1),   s = sigmoid((log u - log(1 - u) + log_alpha) / beta),
    z = clamp(s * (zeta - gamma) + gamma, 0, 1)

with beta = 2/3, gamma = -0.1, zeta = 1.1; in evaluation s = sigmoid(log_alpha). Training minimises
loss + lam * sum P(z != 0), where P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)), so the
gates of heads the task does not need close (Voita, Talbot, Moiseev, Sennrich & Titov 2019,
"Analyzing Multi-Head Self-Attention", arXiv:1905.09418).

The gates are the method's own tensors, never in the model's state dict: a forward pre-hook scales the
input columns of each output projection, and the method takes its own Adam step on log_alpha once per
optimizer step (gradients averaged over processes). At the hard prune to the target (default: one shot
at 70% of training) the groups with the lowest log_alpha go, every kept group's evaluation gate is folded
into its output columns (so the plain model computes what the gated one did in evaluation) and the hooks
are removed; training then goes on without gates. `Pruner.bake` folds them too if that never happened.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from prunebert.methods.base import MethodOptions
from prunebert.methods.registry import register_method
from prunebert.methods.structured import GroupPruning
from prunebert.structure import GroupSet
from prunebert.targets import Target

if TYPE_CHECKING:
    from prunebert.config import PruningConfig

__all__ = ["GateOptions", "GatePruning", "adam_update", "hard_concrete", "l0_gradient", "open_probability"]

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # Louizos et al. 2018's temperature and stretch


def hard_concrete(log_alpha: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """Gates from uniform noise `u` (training), or the deterministic evaluation gates (u None)."""
    if u is None:
        s = torch.sigmoid(log_alpha)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def open_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z != 0): the expected L0 norm of each gate."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def l0_gradient(log_alpha: torch.Tensor, lam: float) -> torch.Tensor:
    """d/d(log_alpha) of lam * sum P(z != 0)."""
    p = open_probability(log_alpha)
    return lam * p * (1.0 - p)


def adam_update(
    param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bias-corrected Adam step (betas 0.9, 0.999; eps 1e-8): (new param, new m, new v)."""
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad.square()
    m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
    return param - lr * m_hat / (v_hat.sqrt() + 1e-8), m, v


def _check(name: str, value: object, low: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):  # type: ignore[operator]
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GateOptions(MethodOptions):
    """lam: L0 penalty per open gate (loss units); lr_gates: Adam step size on log_alpha; init: its start."""

    lam: float = 0.01
    lr_gates: float = 0.05
    #: 3.0 starts every gate open (evaluation gate 1.0, training samples almost always 1.0)
    init: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", _check("lam", self.lam, 0.0, strict=False))
        object.__setattr__(self, "lr_gates", _check("lr_gates", self.lr_gates, 0.0, strict=True))
        object.__setattr__(self, "init", _check("init", self.init, -math.inf, strict=True))


@register_method("gates")
class GatePruning(GroupPruning):
    """Heads (and neurons, with FFN roles) ranked by learned Hard Concrete gates under an L0 penalty."""

    options_cls: ClassVar[type[MethodOptions]] = GateOptions
    defaults: ClassVar[dict[str, Any]] = {
        "schedule": "oneshot",
        "start_fraction": 0.7,
        "scope": "global",
        "roles": ["query", "key", "value", "attention_output"],
    }

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, GateOptions)
        self.opts = options
        self.log_alpha: dict[str, torch.Tensor] = {}  # set key -> (G,) float32 leaf, requires_grad
        self._moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._modules: dict[str, nn.Module] = {}  # set key -> its output projection
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.steps = 0
        self.gated = True  # False once the gates are folded into the weights

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruningConfig) -> None:
        """One gate per group, applied by a forward pre-hook on each output projection."""
        super().bind(model, targets, config)
        for s in self.sets:
            module = model.get_submodule(s.output.name)
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            groups = weight.shape[1] // s.group_size
            alpha = torch.full((groups,), self.opts.init, device=weight.device)
            self.log_alpha[s.key] = alpha.requires_grad_()
            self._moments[s.key] = (torch.zeros_like(alpha), torch.zeros_like(alpha))
            self._modules[s.key] = module
            self._hooks.append(module.register_forward_pre_hook(partial(self._gate, s)))

    def _alpha(self, key: str, device: torch.device) -> torch.Tensor:
        """log_alpha of `key`, moved (as the same leaf) to where the model now runs."""
        alpha = self.log_alpha[key]
        if alpha.device != device:
            alpha.data = alpha.data.to(device)
        return alpha

    def _gate(self, s: GroupSet, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # (..., G * group_size): heads' context, or the FFN activations
        alpha = self._alpha(s.key, x.device)
        u = torch.rand(alpha.shape, device=x.device).clamp(1e-6, 1 - 1e-6) if module.training else None
        z = hard_concrete(alpha, u).repeat_interleave(s.group_size)  # (G * group_size,)
        return (x * z.to(x.dtype), *args[1:])

    @torch.no_grad()
    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Adam step on every log_alpha: the task gradient plus the L0 penalty's."""
        if not self.gated:
            return
        self.steps += 1
        for key, alpha in self.log_alpha.items():
            grad = alpha.grad if alpha.grad is not None else torch.zeros_like(alpha)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(grad)  # every rank keeps the same gates
                grad /= dist.get_world_size()
            m, v = (t.to(alpha.device) for t in self._moments[key])
            grad = grad + l0_gradient(alpha, self.opts.lam)
            new, m, v = adam_update(alpha, grad, m, v, self.steps, self.opts.lr_gates)
            alpha.copy_(new)
            alpha.grad = None
            self._moments[key] = (m, v)

    def group_values(self, s: GroupSet, weight: torch.Tensor) -> torch.Tensor:
        """log_alpha: the more open a gate, the more its group is kept."""
        return self.log_alpha[s.key].detach().to(weight.device)

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """At the final masks, fold the gates into the weights and stop gating."""
        if final:
            self.finalize()

    @torch.no_grad()
    def finalize(self) -> None:
        """Scale each output column by its evaluation gate, then remove the hooks (idempotent)."""
        if self.gated:
            for s in self.sets:
                weight = self._modules[s.key].weight
                assert isinstance(weight, torch.Tensor)
                z = hard_concrete(self.log_alpha[s.key].detach().to(weight.device))
                weight.mul_(z.repeat_interleave(s.group_size).to(weight.dtype))
        self._release()

    def _release(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.gated = False

    def log_metrics(self) -> dict[str, float]:
        """`gates_open`: mean P(z != 0) while gating, plus the fraction of groups pruned."""
        metrics = super().log_metrics()
        if self.gated and self.log_alpha:
            probability = torch.cat([open_probability(a.detach().cpu()) for a in self.log_alpha.values()])
            metrics["gates_open"] = round(float(probability.mean()), 4)
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Gates, their Adam moments, the step count and whether they are already folded."""
        state = {"steps": torch.tensor(self.steps), "gated": torch.tensor(self.gated)}
        for key, alpha in self.log_alpha.items():
            m, v = self._moments[key]
            state.update({f"log_alpha.{key}": alpha.detach(), f"adam_m.{key}": m, f"adam_v.{key}": v})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned; a checkpoint taken after folding leaves the model ungated."""
        self.steps = int(state["steps"].item())
        for key, alpha in self.log_alpha.items():
            alpha.copy_(state[f"log_alpha.{key}"])
            self._moments[key] = (state[f"adam_m.{key}"].clone(), state[f"adam_v.{key}"].clone())
        if not bool(state["gated"].item()):
            self._release()  # the checkpoint's weights already hold the folded gates
