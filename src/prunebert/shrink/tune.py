"""Mask tuning: rescale each layer's kept heads and neurons by least squares (Kwon et al. 2022, sec. 4.3).

Layer by layer, in order: the dense model's layer l sees the dense hidden states (the teacher's), the
pruned model's layer l sees its own, already tuned, hidden states (the student's). The scales of layer l's
kept heads are chosen so that the student's pre-LayerNorm attention sum matches the teacher's,
then (with those applied) the kept neurons' scales so the FFN sum matches; then the student's hidden
states move on through the tuned layer. A layer with nothing kept is skipped by the student (it will be
dropped). At the last layer of a classifier only the first token is matched: nothing else reaches the
head. Each layer's inputs are replayed from stored hidden states, so tuning costs about four passes of
one layer per layer, not a model pass per layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunebert.shrink.gates import LayerCall, LayerGroups, Stop, captured, gated, run_layer
from prunebert.shrink.maths import (
    head_system,
    neuron_system,
    relative_error,
    solve_scales,
    solve_weights,
    weight_error,
    weight_system,
)
from prunebert.structure import encoder_layers

__all__ = ["tune_scales", "tune_weights"]

System = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class _Targets:
    """The teacher's pre-LayerNorm sums of one layer on the selected tokens, per batch: (N, D) each."""

    attention: list[torch.Tensor]
    ffn: list[torch.Tensor]


def _select(x: torch.Tensor, call: LayerCall, first_only: bool) -> torch.Tensor:
    """The tokens that count: every real token (N, D), or only the first of each sequence (B, D)."""
    return x[:, 0] if first_only else x[call.valid]


def _module(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    assert isinstance(module, nn.Linear)
    return module


def _bias(out: nn.Linear) -> torch.Tensor:
    """The output Linear's bias (D,), zeros if it has none."""
    return out.bias if out.bias is not None else torch.zeros(out.weight.shape[0])


def _summed(systems: Iterable[System]) -> System:
    """The normal equations of every batch added up (there must be at least one batch)."""
    total: System | None = None
    for ata, atb, btb in systems:
        total = (ata, atb, btb) if total is None else (total[0] + ata, total[1] + atb, total[2] + btb)
    assert total is not None
    return total


def _teacher(
    model: nn.Module, g: LayerGroups, calls: Sequence[LayerCall], hidden: list[torch.Tensor], first: bool
) -> tuple[_Targets, list[torch.Tensor]]:
    """The dense layer on the teacher's states: its two pre-LayerNorm sums, and its outputs."""
    layer = encoder_layers(model)[1][g.layer]
    out_att, out_ffn = _module(model, g.heads.output.name), _module(model, g.neurons.output.name)
    seen: dict[str, torch.Tensor] = {}
    targets, outputs = _Targets([], []), []
    for call, h in zip(calls, hidden, strict=True):
        with (
            captured(out_att, seen, "ctx"),
            captured(model.get_submodule(g.neurons.inputs[0].name), seen, "res"),
            captured(out_ffn, seen, "acts"),
        ):
            outputs.append(run_layer(layer, h, call))
        targets.attention.append(_select(out_att(seen["ctx"]) + h, call, first))
        targets.ffn.append(_select(out_ffn(seen["acts"]) + seen["res"], call, first))
    return targets, outputs


@dataclass(frozen=True)
class _Block:
    """One least-squares pass over an output projection of layer `g`: the student's states `hidden` in,
    the teacher's pre-LayerNorm sums `targets` to reach, per calibration call (first tokens only if
    `first`)."""

    model: nn.Module
    g: LayerGroups
    calls: Sequence[LayerCall]
    hidden: list[torch.Tensor]
    targets: list[torch.Tensor]
    first: bool


def _attention_inputs(b: _Block) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch on `hidden` (the student's states): the context entering layer g's attention output
    projection (N, H*d), and what that projection must add to the residual to reach the target (N, D)."""
    layer = encoder_layers(b.model)[1][b.g.layer]
    out = _module(b.model, b.g.heads.output.name)
    seen: dict[str, torch.Tensor] = {}
    for call, h, target in zip(b.calls, b.hidden, b.targets, strict=True):
        with captured(out, seen, "ctx", stop=True), contextlib.suppress(Stop):
            run_layer(layer, h, call)
        yield _select(seen["ctx"], call, b.first), target - _select(h, call, b.first)


def _ffn_inputs(b: _Block, head_gates: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch, with the heads gated by `head_gates` (None: as the weights are): the activations
    entering layer g's FFN output projection (N, F) and the target minus the FFN's residual (N, D)."""
    layer = encoder_layers(b.model)[1][b.g.layer]
    out = _module(b.model, b.g.neurons.output.name)
    ffn_in = b.model.get_submodule(b.g.neurons.inputs[0].name)
    gates = {} if head_gates is None else {b.g.layer: head_gates}
    seen: dict[str, torch.Tensor] = {}
    for call, h, target in zip(b.calls, b.hidden, b.targets, strict=True):
        with (
            gated(b.model, [b.g], gates, {}),
            captured(ffn_in, seen, "res"),
            captured(out, seen, "acts", stop=True),
            contextlib.suppress(Stop),
        ):
            run_layer(layer, h, call)
        yield _select(seen["acts"], call, b.first), target - _select(seen["res"], call, b.first)


def _attention_systems(b: _Block, kept: torch.Tensor) -> Iterator[System]:
    """Per batch, normal equations for the scales of the kept heads of layer g on the student's states."""
    out = _module(b.model, b.g.heads.output.name)
    d = b.g.heads.group_size
    weight = out.weight.view(out.weight.shape[0], -1, d)[:, kept]  # (D, K, d)
    bias = _bias(out)
    for ctx, rest in _attention_inputs(b):
        per_head = torch.einsum("nkd,ekd->kne", ctx.view(ctx.shape[0], -1, d)[:, kept], weight)
        yield head_system(per_head, rest - bias)


def _ffn_systems(b: _Block, kept: torch.Tensor, head_gates: torch.Tensor) -> Iterator[System]:
    """Per batch, normal equations for the scales of the kept neurons of layer g, its heads already tuned."""
    out = _module(b.model, b.g.neurons.output.name)
    weight, bias = out.weight[:, kept], _bias(out)  # (D, K), (D,)
    for acts, rest in _ffn_inputs(b, head_gates):
        yield neuron_system(acts[:, kept], weight, rest - bias)


def _solve(system: System, damp: float, kind: str, layer: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Scales for one block (None: keep 1) and a report line: residual before and after."""
    ata, atb, btb = system
    scales = solve_scales(ata, atb, damp)
    ones = torch.ones(ata.shape[0], dtype=torch.float64)
    before = relative_error(ata, atb, btb, ones)
    after = before if scales is None else relative_error(ata, atb, btb, scales)
    status = "tuned" if scales is not None else "kept at 1 (solution unbounded)"
    return scales, {
        "layer": layer,
        "block": kind,
        "status": status,
        "error_before": before,
        "error_after": after,
    }


_Gates = tuple[torch.Tensor, torch.Tensor]


def _walk(
    model: nn.Module,
    groups: Sequence[LayerGroups],
    calls: Sequence[LayerCall],
    keep_heads: torch.Tensor,
    keep_neurons: torch.Tensor,
    first_token_last: bool,
    step: Callable[[LayerGroups, _Targets, list[torch.Tensor], bool], _Gates],
) -> None:
    """The tuners' schedule, layer by layer in order: the dense layer on the teacher's states gives the
    targets; `step(g, targets, student states, first)` tunes layer g and returns its head and neuron
    gates; the student's states then move on through the tuned layer under those gates. A layer that
    keeps nothing is not stepped and the student skips it (it will be dropped). At the last layer of a
    classifier (`first_token_last`) only the first token is matched: nothing else reaches the head."""
    teacher = [c.hidden for c in calls]
    student = list(teacher)
    layers = encoder_layers(model)[1]
    for g in groups:
        first = first_token_last and g.layer == len(groups) - 1
        targets, teacher_next = _teacher(model, g, calls, teacher, first)
        if bool(keep_heads[g.layer].any()) or bool(keep_neurons[g.layer].any()):
            head_gates, neuron_gates = step(g, targets, student, first)
            with gated(model, [g], {g.layer: head_gates}, {g.layer: neuron_gates}):
                student = [run_layer(layers[g.layer], h, c) for h, c in zip(student, calls, strict=True)]
        teacher = teacher_next


@torch.no_grad()
def tune_scales(
    model: nn.Module,
    groups: Sequence[LayerGroups],
    calls: Sequence[LayerCall],
    keep_heads: torch.Tensor,
    keep_neurons: torch.Tensor,
    damp: float = 1e-2,
    first_token_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """Scales (L, H) and (L, F) of the kept groups (0 where pruned) and a per-block report."""
    head_scales, neuron_scales = keep_heads.double(), keep_neurons.double()
    report = []

    def step(g: LayerGroups, targets: _Targets, student: list[torch.Tensor], first: bool) -> _Gates:
        heads, neurons = keep_heads[g.layer].nonzero().flatten(), keep_neurons[g.layer].nonzero().flatten()
        if len(heads):
            block = _Block(model, g, calls, student, targets.attention, first)
            scales, line = _solve(_summed(_attention_systems(block, heads)), damp, "attention", g.layer)
            report.append(line)
            if scales is not None:
                head_scales[g.layer, heads] = scales
        if len(neurons):
            gates = head_scales[g.layer].float()
            block = _Block(model, g, calls, student, targets.ffn, first)
            scales, line = _solve(_summed(_ffn_systems(block, neurons, gates)), damp, "ffn", g.layer)
            report.append(line)
            if scales is not None:
                neuron_scales[g.layer, neurons] = scales
        return head_scales[g.layer].float(), neuron_scales[g.layer].float()

    _walk(model, groups, calls, keep_heads, keep_neurons, first_token_last, step)
    return head_scales.float(), neuron_scales.float(), report


def _columns(kept: torch.Tensor, size: int) -> torch.Tensor:
    """The output-projection columns of the kept groups of `size` columns each. (K * size,)"""
    return (kept[:, None] * size + torch.arange(size)).flatten()


def _refit(
    out: nn.Linear, systems: Iterable[System], columns: torch.Tensor, damp: float, kind: str, layer: int
) -> dict[str, Any]:
    """Solve for the kept columns and bias of `out`, write them, zero the pruned columns; report line."""
    ata, atb, btb = _summed(systems)
    start = out.weight[:, columns].T.double()
    if out.bias is not None:  # its row of ones was appended last
        start = torch.cat([start, out.bias[None, :].double()])
    else:
        ata, atb = ata[:-1, :-1], atb[:-1]
    weights = solve_weights(ata, atb, start, damp)
    line = {
        "layer": layer,
        "block": kind,
        "status": "refitted",
        "error_before": weight_error(ata, atb, btb, start),
        "error_after": weight_error(ata, atb, btb, weights),
    }
    pruned = torch.ones(out.weight.shape[1], dtype=torch.bool)
    pruned[columns] = False
    out.weight[:, pruned] = 0
    out.weight[:, columns] = weights[: len(columns)].T.to(out.weight.dtype)
    if out.bias is not None:
        out.bias.copy_(weights[-1])
    return line


@torch.no_grad()
def tune_weights(
    model: nn.Module,
    groups: Sequence[LayerGroups],
    calls: Sequence[LayerCall],
    keep_heads: torch.Tensor,
    keep_neurons: torch.Tensor,
    damp: float = 1e-2,
    first_token_last: bool = True,
) -> list[dict[str, Any]]:
    """Refit each layer's output projections on the kept heads and neurons (in place); a per-block report.

    Same schedule as `tune_scales` (teacher states for the targets, the student's own states for the
    inputs, attention before FFN, layer by layer), but each kept column of the two output projections and
    their biases are solved for (`maths.solve_weights`), not one scale per group. Pruned columns are set
    to zero, so the keep masks are then the scales to fold.
    """
    report = []

    def step(g: LayerGroups, targets: _Targets, student: list[torch.Tensor], first: bool) -> _Gates:
        heads, neurons = keep_heads[g.layer].nonzero().flatten(), keep_neurons[g.layer].nonzero().flatten()
        out_att, out_ffn = _module(model, g.heads.output.name), _module(model, g.neurons.output.name)
        columns = _columns(heads, g.heads.group_size)
        if len(heads):
            inputs = _attention_inputs(_Block(model, g, calls, student, targets.attention, first))
            systems = (weight_system(ctx[:, columns], rest) for ctx, rest in inputs)
            report.append(_refit(out_att, systems, columns, damp, "attention", g.layer))
        else:
            out_att.weight.zero_()
        if len(neurons):
            inputs = _ffn_inputs(_Block(model, g, calls, student, targets.ffn, first), None)
            systems = (weight_system(acts[:, neurons], rest) for acts, rest in inputs)
            report.append(_refit(out_ffn, systems, neurons, damp, "ffn", g.layer))
        else:
            out_ffn.weight.zero_()
        return keep_heads[g.layer].float(), keep_neurons[g.layer].float()  # pruned columns are zero now

    _walk(model, groups, calls, keep_heads, keep_neurons, first_token_last, step)
    return report
