"""Kwon et al.'s mask variables as forward hooks, and what is read through them.

transformers v5 removed `head_mask`, so a mask variable is a forward pre-hook on the layer's output
projection (attention_output / ffn_out, found through the role table) that multiplies each head's
block of the context (B, T, H*d) and each neuron's activation (B, T, F) by its gate: exactly what a head
mask on the attention probabilities did, and what scaling those weight columns does (`fold_scales`).
Gates of shape (B, G) are per example, so one backward pass gives every example's mask gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from prunebert.errors import PrunebertError
from prunebert.shrink.maths import accumulate_gram
from prunebert.structure import GroupSet, encoder_layers, group_sets
from prunebert.targets import ENCODER_ROLES, find_targets

__all__ = [
    "LayerCall",
    "LayerGroups",
    "Stop",
    "captured",
    "fold_scales",
    "gated",
    "group_count",
    "layer_groups",
    "layer_inputs",
    "mask_grams",
    "run_layer",
]

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LayerGroups:
    """The heads and the FFN neurons of one encoder layer."""

    layer: int
    heads: GroupSet
    neurons: GroupSet


def layer_groups(model: PreTrainedModel) -> list[LayerGroups]:
    """Every layer's heads and neurons; a model whose layers are not all plain and complete is refused."""
    sets = {(s.layer, s.kind): s for s in group_sets(find_targets(model, ENCODER_ROLES), model.config)}
    count = len(encoder_layers(model)[1])
    out = []
    for layer in range(count):
        heads, neurons = sets.get((layer, "heads")), sets.get((layer, "neurons"))
        if heads is None or neurons is None or len(heads.inputs) != 3 or len(neurons.inputs) != 1:
            raise PrunebertError(
                f"layer {layer} is not a complete attention + FFN block of plain Linears (factorised or "
                "custom targets); shrink starts from a fine-tuned, unpruned model"
            )
        out.append(LayerGroups(layer, heads, neurons))
    return out


def _gate_hook(gate: torch.Tensor, size: int) -> Any:
    """A pre-hook multiplying the projection's input (B, T, G*size) by `gate` (G,) or (B, G)."""
    spread = gate.repeat_interleave(size, dim=-1)  # (G*size,) or (B, G*size)
    if spread.dim() == 2:
        spread = spread[:, None, :]  # (B, 1, G*size): one gate per example

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * spread.to(args[0].dtype), *args[1:])

    return hook


@contextmanager
def gated(
    model: nn.Module,
    groups: Sequence[LayerGroups],
    heads: Mapping[int, torch.Tensor],
    neurons: Mapping[int, torch.Tensor],
) -> Iterator[None]:
    """Within the block, layer l's heads / neurons are multiplied by heads[l] / neurons[l] (absent: 1)."""
    handles = []
    try:
        for g in groups:
            for s, gates in ((g.heads, heads), (g.neurons, neurons)):
                if g.layer in gates:
                    hook = _gate_hook(gates[g.layer], s.group_size)
                    handles.append(model.get_submodule(s.output.name).register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients (only the gates'), eval mode; both restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def mask_grams(
    model: PreTrainedModel, groups: Sequence[LayerGroups], batches: Iterable[Batch]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer, the Gram matrix of per-example mask gradients: heads (L, H, H), neurons (L, F, F).

    The batch loss (a mean) times the batch size is the sum of the examples' losses, and example b only
    reaches its own gates, so d(sum)/d(gate[b]) is example b's gradient.
    """
    grams: list[torch.Tensor | None] = [None] * (2 * len(groups))
    device = next(model.parameters()).device
    with _frozen(model):
        for batch in batches:
            size = batch["input_ids"].shape[0]
            gates = [
                torch.ones(size, group_count(model, s), device=device, requires_grad=True)
                for g in groups
                for s in (g.heads, g.neurons)
            ]
            heads = {g.layer: gates[2 * i] for i, g in enumerate(groups)}
            neurons = {g.layer: gates[2 * i + 1] for i, g in enumerate(groups)}
            with gated(model, groups, heads, neurons):
                loss = model(**batch).loss
            if loss is None:
                raise PrunebertError(
                    "calibration batches need labels: the mask gradients are of the task loss"
                )
            grads = torch.autograd.grad(loss * size, gates)
            grams = [accumulate_gram(gram, grad) for gram, grad in zip(grams, grads, strict=True)]
    return torch.stack([g for g in grams[0::2] if g is not None]), torch.stack(
        [g for g in grams[1::2] if g is not None]
    )


def group_count(model: nn.Module, s: GroupSet) -> int:
    """How many heads / neurons the set has now: output-projection columns over the group width."""
    return _linear(model, s.output.name).weight.shape[1] // s.group_size


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear)
    return module


class Stop(Exception):  # noqa: N818  (a control-flow signal, not an error)
    """Raised by a capture hook to end a forward pass once what was wanted is read."""


@dataclass
class LayerCall:
    """One batch as an encoder layer sees it: hidden states in, the other arguments, real tokens."""

    hidden: torch.Tensor  # (B, T, D)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    valid: torch.Tensor  # (B, T) bool: not padding
    extra: dict[str, Any] = field(default_factory=dict)


def layer_inputs(model: PreTrainedModel, batches: Iterable[Batch]) -> list[LayerCall]:
    """Each batch's input to the first encoder layer, with the arguments every layer is called with."""
    first = encoder_layers(model)[1][0]
    calls: list[LayerCall] = []
    current: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(LayerCall(args[0].detach(), args[1:], kwargs, current["valid"]))
        raise Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                current["valid"] = batch["attention_mask"].bool()
                with suppress(Stop):
                    model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    return calls


def run_layer(layer: nn.Module, hidden: torch.Tensor, call: LayerCall) -> torch.Tensor:
    """The layer's output hidden states (B, T, D) for `hidden` under the batch's other arguments."""
    out = layer(hidden, *call.args, **call.kwargs)
    result: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return result


@contextmanager
def captured(
    module: nn.Module, into: dict[str, torch.Tensor], key: str, stop: bool = False
) -> Iterator[None]:
    """Store the module's first input (before any gate hook) in into[key]; with `stop`, end the pass."""

    def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        into[key] = args[0].detach()
        if stop:
            raise Stop

    handle = module.register_forward_pre_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def fold_scales(
    model: nn.Module, groups: Sequence[LayerGroups], heads: torch.Tensor, neurons: torch.Tensor
) -> None:
    """Bake gates into the weights: output-projection columns times their group's scale (0 = pruned)."""
    for g in groups:
        for s, scale in ((g.heads, heads[g.layer]), (g.neurons, neurons[g.layer])):
            weight = _linear(model, s.output.name).weight
            spread = scale.repeat_interleave(s.group_size).to(weight.dtype)
            weight.mul_(spread[None, :].to(weight.device))
