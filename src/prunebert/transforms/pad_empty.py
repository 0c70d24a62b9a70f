"""Give a slimmed model's empty blocks one all-zero column, for exporters that reject zero-size tensors.

A slimmed layer with no head left runs a `NoHeads` stand-in whose context is zero-width (B, T, 0), and
one with no FFN neuron left has zero-width FFN matrices; in PyTorch both give exactly the output
projection's bias. OpenVINO's converter does not: on those graphs it fails or computes wrong values
(measured: 0.29 max abs difference on a model with every head removed). `pad_empty_blocks` rewrites
them, in place, into an equal function with no zero-size tensor: a zero-width input becomes one zero
column, a Linear from or to width 0 becomes one from or to width 1 with zero weights (and, into width 1,
zero bias), so the zero column passes the activation (GELU / ReLU of 0 is 0) and the output projection
still yields its bias alone. Exports call it (OpenVINO always; ONNX when it writes int8, as ONNX Runtime's
quantizer fails on a zero-size weight); saved models keep their true shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["pad_empty_blocks"]


class _OneColumn(nn.Module):
    """A `NoHeads` that returns one zero column (B, T, 1), through its inner projection if it has one."""

    def __init__(self, no_heads: nn.Module) -> None:
        super().__init__()
        self.no_heads = no_heads

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        context = hidden_states.new_zeros((*hidden_states.shape[:-1], 1))
        name = getattr(self.no_heads, "out_name", None)
        if name is not None:
            context = getattr(self.no_heads, name)(context)
        return context, None


def _padded(linear: nn.Linear) -> nn.Linear:
    """The Linear with a zero-width side widened to one zero column / row (bias kept, or zero if new)."""
    inputs, outputs = max(linear.in_features, 1), max(linear.out_features, 1)
    new = nn.Linear(inputs, outputs, bias=linear.bias is not None or linear.out_features == 0)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        if new.bias is not None:
            new.bias.zero_()
            if linear.bias is not None and linear.out_features:
                new.bias.copy_(linear.bias)
    return new


def pad_empty_blocks(model: nn.Module) -> int:
    """Rewrite zero-width Linears and `NoHeads` modules as described above; returns how many changed."""
    changed = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and 0 in (module.in_features, module.out_features):
            model.set_submodule(name, _padded(module))
            changed += 1
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "NoHeads":
            model.set_submodule(name, _OneColumn(module))
            changed += 1
    return changed
