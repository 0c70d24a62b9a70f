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
from functools import partial
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn

from prunebert.methods.base import MethodOptions, Number, PruneSettings, PruningMethod
from prunebert.methods.registry import register_method
from prunebert.methods.structured import GroupPruning
from prunebert.structure import GroupSet
from prunebert.targets import Target

__all__ = [
    "GateOptions",
    "GatePruning",
    "GateTensors",
    "GatedMethod",
    "LearnedGateOptions",
    "adam_update",
    "hard_concrete",
    "l0_gradient",
    "open_probability",
]

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


class GateTensors:
    """Hard Concrete log_alpha tensors by key, outside any model's state dict, with their own Adam step.

    Each log_alpha is a float32 leaf that collects its task gradient in the model's backward; once per
    optimizer step `task_gradients` reads (and averages over processes) those gradients, the method adds
    its penalty's and `step` takes one Adam step on every log_alpha.
    """

    def __init__(self, init: float, lr: float) -> None:
        self.init, self.lr = init, lr
        self.log_alpha: dict[str, torch.Tensor] = {}  # key -> (n,) float32 leaf, requires_grad
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps = 0

    def add(self, key: str, size: int, device: torch.device) -> None:
        """`size` gates under `key`, every log_alpha at `init`."""
        alpha = torch.full((size,), self.init, device=device)
        self.log_alpha[key] = alpha.requires_grad_()
        self.moments[key] = (torch.zeros_like(alpha), torch.zeros_like(alpha))

    def get(self, key: str, device: torch.device) -> torch.Tensor:
        """log_alpha of `key`, moved (as the same leaf) to where the model now runs."""
        alpha = self.log_alpha[key]
        if alpha.device != device:
            alpha.data = alpha.data.to(device)
        return alpha

    def sample(self, key: str, device: torch.device, training: bool) -> torch.Tensor:
        """The gates z of `key`: Hard Concrete samples in training, the evaluation gates otherwise."""
        alpha = self.get(key, device)
        u = torch.rand(alpha.shape, device=device).clamp(1e-6, 1 - 1e-6) if training else None
        return hard_concrete(alpha, u)

    @torch.no_grad()
    def task_gradients(self) -> dict[str, torch.Tensor]:
        """Each log_alpha's gradient from the model's backward (zeros if none), averaged over processes."""
        grads = {}
        for key, alpha in self.log_alpha.items():
            grad = alpha.grad if alpha.grad is not None else torch.zeros_like(alpha)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(grad)  # every rank keeps the same gates
                grad /= dist.get_world_size()
            grads[key] = grad
        return grads

    @torch.no_grad()
    def step(self, grads: Mapping[str, torch.Tensor]) -> None:
        """One Adam step on every log_alpha along `grads` (by key); clears their `.grad`."""
        self.steps += 1
        for key, alpha in self.log_alpha.items():
            m, v = (t.to(alpha.device) for t in self.moments[key])
            new, m, v = adam_update(alpha, grads[key], m, v, self.steps, self.lr)
            alpha.copy_(new)
            alpha.grad = None
            self.moments[key] = (m, v)

    def open_fraction(self) -> float:
        """Mean P(z != 0) over every gate."""
        probability = torch.cat([open_probability(a.detach().cpu()) for a in self.log_alpha.values()])
        return float(probability.mean())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every log_alpha, its Adam moments and the step count."""
        state = {"steps": torch.tensor(self.steps)}
        for key, alpha in self.log_alpha.items():
            m, v = self.moments[key]
            state.update({f"log_alpha.{key}": alpha.detach(), f"adam_m.{key}": m, f"adam_v.{key}": v})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned (the same keys must have been added)."""
        self.steps = int(state["steps"].item())
        for key, alpha in self.log_alpha.items():
            alpha.copy_(state[f"log_alpha.{key}"])
            self.moments[key] = (state[f"adam_m.{key}"].clone(), state[f"adam_v.{key}"].clone())


class LearnedGateOptions(MethodOptions):
    """What every method with `GateTensors` takes: their Adam step size and their starting log_alpha."""

    lr_gates: Number = Field(0.05, gt=0.0, description="Adam step size on the gates' log_alpha")
    init: Number = Field(
        3.0,
        description="every log_alpha's start (3.0: all open, evaluation gate 1.0, training samples almost "
        "always 1.0)",
    )


class GateOptions(LearnedGateOptions):
    """The L0 penalty on top of the learned gates' options."""

    lam: Number = Field(0.01, ge=0.0, description="L0 penalty per open gate, in loss units")


class GatedMethod(PruningMethod):
    """A method that learns `GateTensors` (options: `LearnedGateOptions`) and ends by folding them.

    A subclass gates its modules in `bind`, writes the evaluation gates into the weights in `_fold` and
    removes the gating in `_ungate`: at the final masks (or `Pruner.bake`) `finalize` does both, once.
    Checkpoints carry the gates, their Adam moments and step count, and whether they are folded yet.
    """

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, LearnedGateOptions)
        self.gates = GateTensors(options.init, options.lr_gates)
        self.gated = True  # False once the gates are folded into the weights

    def _fold(self) -> None:
        """Multiply the weights by their evaluation gates."""
        raise NotImplementedError

    def _ungate(self) -> None:
        """Remove the gating from the model."""
        raise NotImplementedError

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """At the final masks, fold the gates into the weights and stop gating."""
        if final:
            self.finalize()

    @torch.no_grad()
    def finalize(self) -> None:
        """Fold the evaluation gates into the weights, then stop gating (idempotent)."""
        if self.gated:
            self._fold()
            self._stop_gating()

    def _stop_gating(self) -> None:
        self._ungate()
        self.gated = False

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Gates, their Adam moments, the step count and whether they are already folded."""
        return {**self.gates.state_dict(), "gated": torch.tensor(self.gated)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned; a checkpoint taken after folding leaves the model ungated."""
        self.gates.load_state_dict(state)
        if self.gated and not bool(state["gated"].item()):
            self._stop_gating()  # the checkpoint's weights already hold the folded gates


@register_method("gates")
class GatePruning(GatedMethod, GroupPruning):
    """Heads (and neurons, with FFN roles) ranked by learned Hard Concrete gates under an L0 penalty."""

    paper: ClassVar[str] = "Voita et al. 2019, arXiv:1905.09418"
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
        self._modules: dict[str, nn.Module] = {}  # set key -> its output projection
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def log_alpha(self) -> dict[str, torch.Tensor]:
        """Set key -> (G,) log_alpha."""
        return self.gates.log_alpha

    @property
    def steps(self) -> int:
        """Gate steps taken."""
        return self.gates.steps

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """One gate per group, applied by a forward pre-hook on each output projection."""
        super().bind(model, targets, config)
        for s in self.sets:
            module = model.get_submodule(s.output.name)
            weight = module.weight
            assert isinstance(weight, torch.Tensor)
            self.gates.add(s.key, weight.shape[1] // s.group_size, weight.device)
            self._modules[s.key] = module
            self._hooks.append(module.register_forward_pre_hook(partial(self._gate, s)))

    def _gate(self, s: GroupSet, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # (..., G * group_size): heads' context, or the FFN activations
        z = self.gates.sample(s.key, x.device, module.training).repeat_interleave(s.group_size)
        return (x * z.to(x.dtype), *args[1:])

    @torch.no_grad()
    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Adam step on every log_alpha: the task gradient plus the L0 penalty's."""
        if not self.gated:
            return
        grads = self.gates.task_gradients()
        self.gates.step({k: g + l0_gradient(self.log_alpha[k], self.opts.lam) for k, g in grads.items()})

    def group_values(self, s: GroupSet, weight: torch.Tensor) -> torch.Tensor:
        """log_alpha: the more open a gate, the more its group is kept."""
        return self.log_alpha[s.key].detach().to(weight.device)

    def _fold(self) -> None:
        """Scale each output column by its evaluation gate."""
        for s in self.sets:
            weight = self._modules[s.key].weight
            assert isinstance(weight, torch.Tensor)
            z = hard_concrete(self.log_alpha[s.key].detach().to(weight.device))
            weight.mul_(z.repeat_interleave(s.group_size).to(weight.dtype))

    def _ungate(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def log_metrics(self) -> dict[str, float]:
        """`gates_open`: mean P(z != 0) while gating, plus the fraction of groups pruned."""
        metrics = super().log_metrics()
        if self.gated and self.log_alpha:
            metrics["gates_open"] = round(self.gates.open_fraction(), 4)
        return metrics
