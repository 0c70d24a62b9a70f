"""Whole attention heads and FFN neurons as groups of weight rows and columns, read from the target table.

Head h of a layer owns rows [h*d, (h+1)*d) of query, key and value and the same columns of
attention_output, where d = hidden_size / num_attention_heads comes from the model's config (as the
attention module computes it). FFN neuron j owns row j of ffn_in and column j of ffn_out.

A group reaches the layer's output only through its columns of the output projection (attention_output
or ffn_out). Two things follow, used by the structured methods and by slimming:
- a gate g on the group's output has dL/dg = sum(W * dL/dW) over those columns (at g = 1), exactly;
- a group whose output columns are all zero contributes nothing (the input rows' biases included), so
  removing it, input rows and all, leaves the model's outputs unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from prunebert.errors import PrunebertError
from prunebert.targets import Target, architecture_for

__all__ = [
    "INPUT_ROLES",
    "OUTPUT_ROLES",
    "GroupSet",
    "broadcast_groups",
    "column_group_reduce",
    "encoder_layers",
    "gate_gradient",
    "group_norms",
    "group_sets",
    "head_size",
    "kept_groups",
]

#: structure kind -> the role whose columns the groups are (and where importance is read)
OUTPUT_ROLES = {"heads": "attention_output", "neurons": "ffn_out"}
#: structure kind -> the roles whose rows the groups are
INPUT_ROLES = {"heads": ("query", "key", "value"), "neurons": ("ffn_in",)}


@dataclass(frozen=True)
class GroupSet:
    """The heads (or FFN neurons) of one layer: the weights they span and how wide one group is."""

    kind: str
    layer: int
    group_size: int  # columns of the output projection per group: head size, or 1 for a neuron
    output: Target  # attention_output / ffn_out: each group is a block of its columns
    inputs: tuple[Target, ...]  # query, key, value / ffn_in: each group is a block of their rows

    @property
    def key(self) -> str:
        """A stable name such as `heads.3`."""
        return f"{self.kind}.{self.layer}"

    def members(self) -> list[tuple[Target, int]]:
        """Every weight of the set with the axis its groups run along (0 = rows, 1 = columns)."""
        return [(self.output, 1), *((t, 0) for t in self.inputs)]


def head_size(config: PretrainedConfig) -> int:
    """Width of one attention head, as BERT-family attention modules compute it from their config."""
    return int(config.hidden_size / config.num_attention_heads)


def group_sets(targets: Sequence[Target], config: PretrainedConfig) -> list[GroupSet]:
    """One set per (kind, layer) whose output projection is among `targets`, in layer order.

    Input rows (query/key/value, ffn_in) are grouped with their layer's output projection; targeting
    them without it is an error, because a head or neuron is scored and removed through its output.
    """
    by_role = {(t.layer, t.role): t for t in targets}
    sets = []
    for kind, out_role in OUTPUT_ROLES.items():
        size = head_size(config) if kind == "heads" else 1
        for t in targets:
            if t.role == out_role:
                inputs = tuple(by_role[(t.layer, r)] for r in INPUT_ROLES[kind] if (t.layer, r) in by_role)
                sets.append(GroupSet(kind, t.layer, size, t, inputs))
        covered = {s.layer for s in sets if s.kind == kind}
        orphan = [t for t in targets if t.role in INPUT_ROLES[kind] and t.layer not in covered]
        if orphan:
            raise PrunebertError(
                f"{orphan[0].name} ({orphan[0].role}) is targeted without its layer's {out_role}; "
                f"whole {kind} are scored and removed through {out_role}: add it to --pruning.roles"
            )
    return sorted(sets, key=lambda s: (s.layer, s.kind))


def gate_gradient(weight: torch.Tensor, grad: torch.Tensor, group_size: int) -> torch.Tensor:
    """dL/d(gate) of each column group: sum of W * dL/dW over the group's columns, in float32. (G,)"""
    rows, cols = weight.shape
    product = weight.detach().float() * grad.detach().float()  # (rows, cols)
    return product.view(rows, cols // group_size, group_size).sum(dim=(0, 2))


def group_norms(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """L2 norm of each column group, in float32. (G,)"""
    rows, cols = weight.shape
    squares = weight.detach().float().square().view(rows, cols // group_size, group_size)
    return squares.sum(dim=(0, 2)).sqrt()


def column_group_reduce(tensor: torch.Tensor, group_size: int) -> torch.Tensor:
    """The largest entry of each column group (reads back a score broadcast by `broadcast_groups`). (G,)"""
    rows, cols = tensor.shape
    return tensor.view(rows, cols // group_size, group_size).amax(dim=(0, 2))


def broadcast_groups(values: torch.Tensor, group_size: int, shape: torch.Size, axis: int) -> torch.Tensor:
    """Per-group values (G,) spread over a weight of `shape`: row blocks (axis 0) or column blocks (1)."""
    per_index = values.repeat_interleave(group_size)  # (G * group_size,)
    if per_index.numel() != shape[axis]:
        raise ValueError(f"{values.numel()} groups of {group_size} do not tile axis {axis} of {tuple(shape)}")
    spread = per_index[:, None] if axis == 0 else per_index[None, :]
    return spread.expand(shape).contiguous()


def kept_groups(output_weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """True for each column group with a nonzero entry: the groups that still reach the output. (G,)"""
    return column_group_reduce(output_weight.detach().ne(0).to(torch.uint8), group_size).bool()


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of layers and its name (e.g. `bert.encoder.layer`), found through the role table.

    The list is the module holding the layers that the `ffn_out` pattern numbers; any module type counts
    there (a factorised or slimmed projection has no plain weight), so this works on every form of model.
    """
    pattern = re.compile(architecture_for(model).roles["ffn_out"])
    for name, _ in model.named_modules():
        match = pattern.search(name)
        if match:
            layers = model.get_submodule(name[: match.start(1) - 1])
            assert isinstance(layers, nn.ModuleList)
            return name[: match.start(1) - 1], layers
    raise PrunebertError(f"{type(model).__name__} has no encoder layers that the role table recognises")
