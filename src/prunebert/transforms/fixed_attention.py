"""Fixed encoder self-attention patterns (Raganato, Scherrer & Tiedemann 2020, "Fixed Encoder
Self-Attention Patterns in Transformer-Based Machine Translation", Findings of EMNLP).

Chosen heads stop attending by softmax(Q K^T) and use a fixed, position-based pattern instead:

    current   token i attends to itself
    previous  to token i-1            (the first token to itself)
    next      to token i+1            (the last token to itself)
    left      uniformly to all j < i  (the first token to itself)
    right     uniformly to all j > i  (the last token to itself)

Rows are built over real tokens only: padding columns get weight 0 and a row left empty falls back to the
token itself, so every row is a probability distribution. The head's value projection stays learned (its
context is P @ V_h); its query and key rows become unused, get no gradient, and can be pruned.

Mechanism: hooks found through the architecture's role table (no modeling file is forked). A pre-hook on
the base model keeps the (B, T) `attention_mask`; a hook on each patterned layer's value projection keeps
V; a pre-hook on its attention output projection replaces the patterned heads' slices of that projection's
input (the concatenated head contexts, (B, T, H)) with P @ V_h; a hook on the attention module puts the
patterns into `output_attentions` maps. The learned attention of a patterned head is still computed, then
discarded: patterns alone make nothing faster.

The assignment (layer -> head -> pattern) is recorded in the model's config as `prunebert_fixed_attention`
and `prunebert.models.load_model` re-applies it, so a saved model gives the same outputs after loading.
Saved by prunebert, the model carries its modeling code for plain transformers
(`prunebert.transforms.custom_code`); a model built from the plain config needs
`restore_fixed_attention(model)`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from prunebert.errors import PrunebertError
from prunebert.recipes import StrictModel
from prunebert.structure import head_size
from prunebert.targets import find_targets
from prunebert.transforms.slim import is_slim

__all__ = [
    "CONFIG_KEY",
    "PATTERNS",
    "FixedAttention",
    "FixedAttentionConfig",
    "apply_fixed_attention",
    "assignment_of",
    "fix_heads",
    "pattern_matrix",
    "resolve_heads",
    "restore_fixed_attention",
]

CONFIG_KEY = "prunebert_fixed_attention"
Pattern = Literal["current", "previous", "next", "left", "right"]
PATTERNS: tuple[Pattern, ...] = ("current", "previous", "next", "left", "right")
Assignment = dict[int, dict[int, str]]  # layer -> head -> pattern


class FixedAttentionConfig(StrictModel):
    """Which heads get fixed patterns, and which patterns they get (in turn, cycling through the list)."""

    heads_per_layer: int | None = Field(None, ge=1, description="fix the first N heads of every layer")
    layers: list[int] | None = Field(
        None, description="with heads_per_layer: only these layers (default all)"
    )
    heads: dict[int, list[int]] | None = Field(
        None, description="layer -> head indices to fix, instead of heads_per_layer"
    )
    patterns: list[Pattern] = Field(
        default_factory=lambda: list(PATTERNS),
        min_length=1,
        description="patterns given to a layer's chosen heads in order, cycling: current, previous, "
        "next, left, right",
    )

    @model_validator(mode="after")
    def _one_choice(self) -> FixedAttentionConfig:
        if (self.heads_per_layer is None) == (self.heads is None):
            raise ValueError("set exactly one of heads_per_layer and heads")
        if self.layers is not None and self.heads is not None:
            raise ValueError("layers goes with heads_per_layer; with heads, list the layers as its keys")
        return self


def pattern_matrix(pattern: str, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, T) row-stochastic attention of `pattern` for a (B, T) mask (1 = real token, 0 = padding)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device)
    rel = pos[None, :] - pos[:, None]  # (T, T): j - i
    chosen = {"current": rel == 0, "previous": rel == -1, "next": rel == 1, "left": rel < 0, "right": rel > 0}
    if pattern not in chosen:
        raise PrunebertError(f"unknown attention pattern {pattern!r}; choose from {', '.join(PATTERNS)}")
    weights = chosen[pattern][None].float() * mask[:, None, :].float()  # (B, T, T), padding columns 0
    empty = weights.sum(-1, keepdim=True) == 0
    weights = torch.where(empty, torch.eye(t, device=mask.device).expand_as(weights), weights)
    return weights / weights.sum(-1, keepdim=True)


def resolve_heads(config: FixedAttentionConfig, layers: int, heads: int) -> Assignment:
    """layer -> head -> pattern for a model with `layers` layers of `heads` heads each."""
    if config.heads is not None:
        chosen = {layer: sorted(set(hs)) for layer, hs in config.heads.items()}
    else:
        n = config.heads_per_layer or 0
        if n > heads:
            raise PrunebertError(
                f"heads_per_layer {n} exceeds the {heads} heads per layer; pass at most {heads}"
            )
        chosen = {layer: list(range(n)) for layer in (config.layers or range(layers))}
    for layer, hs in chosen.items():
        if not 0 <= layer < layers or any(not 0 <= h < heads for h in hs):
            raise PrunebertError(
                f"fixed_attention names layer {layer} heads {hs}, but the model has {layers} layers of "
                f"{heads} heads (numbered from 0); fix fixed_attention"
            )
    cycle = config.patterns
    return {
        layer: {h: cycle[k % len(cycle)] for k, h in enumerate(hs)} for layer, hs in sorted(chosen.items())
    }


class FixedAttention:
    """The hooks that give chosen heads fixed patterns; `remove()` takes them out again."""

    def __init__(self, model: PreTrainedModel, assignment: Mapping[int, Mapping[int, str]]) -> None:
        if is_slim(model.config):
            raise PrunebertError(
                "fixed attention patterns on a slimmed model are not supported (its heads are renumbered); "
                "fix the heads before slimming, or use the model before `prunebert slim`"
            )
        self.assignment = {int(layer): {int(h): p for h, p in hs.items()} for layer, hs in assignment.items()}
        self.head_size = head_size(model.config)
        self._mask: torch.Tensor | None = None
        self._values: dict[int, torch.Tensor] = {}
        self._patterns: dict[str, torch.Tensor] = {}
        base = model.base_model
        self._signature = inspect.signature(base.forward)
        self.handles: list[RemovableHandle] = [
            base.register_forward_pre_hook(self._keep_mask, with_kwargs=True)
        ]
        modules = {
            (t.role, t.layer): t.name for t in find_targets(model, ("query", "value", "attention_output"))
        }
        for layer in self.assignment:
            value = model.get_submodule(modules[("value", layer)])
            output = model.get_submodule(modules[("attention_output", layer)])
            attention = model.get_submodule(modules[("query", layer)].rsplit(".", 1)[0])
            self.handles += [
                value.register_forward_hook(self._keep_value(layer)),
                output.register_forward_pre_hook(self._replace_heads(layer)),
                attention.register_forward_hook(self._replace_maps(layer), prepend=True),
            ]

    def remove(self) -> None:
        """Take the hooks out: every head attends as it learned to again."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _keep_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        mask = bound.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise PrunebertError(
                "fixed attention patterns need a (batch, tokens) attention_mask; pass a 2-D one"
            )
        self._mask, self._patterns, self._values = mask, {}, {}

    def _pattern(self, name: str, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
        if name not in self._patterns:
            mask = self._mask if self._mask is not None else torch.ones(batch, tokens, device=device)
            self._patterns[name] = pattern_matrix(name, mask.to(device))
        return self._patterns[name]

    def _keep_value(self, layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            self._values[layer] = output  # (B, T, H): every head's V

        return hook

    def _replace_heads(self, layer: int) -> Any:
        d = self.head_size

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            context, values = args[0], self._values.pop(layer)  # (B, T, H) each
            pieces = list(context.split(d, dim=-1))
            for head, name in self.assignment[layer].items():
                pattern = self._pattern(name, context.shape[0], context.shape[1], context.device)
                pieces[head] = pattern.to(values.dtype) @ values[..., head * d : (head + 1) * d]
            return (torch.cat(pieces, dim=-1), *args[1:])

        return hook

    def _replace_maps(self, layer: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                return None  # no attention maps requested (or sdpa): nothing to show
            maps = output[1].clone()  # (B, heads, T, T)
            for head, name in self.assignment[layer].items():
                maps[:, head] = self._pattern(name, maps.shape[0], maps.shape[-1], maps.device).to(maps.dtype)
            return (output[0], maps, *output[2:])

        return hook


def assignment_of(model: PreTrainedModel) -> Assignment | None:
    """The recorded layer -> head -> pattern of a model's config, if it has fixed heads."""
    record = getattr(model.config, CONFIG_KEY, None)
    if not isinstance(record, dict):
        return None
    return {int(layer): {int(h): str(p) for h, p in hs.items()} for layer, hs in record["heads"].items()}


def apply_fixed_attention(
    model: PreTrainedModel, assignment: Mapping[int, Mapping[int, str]]
) -> FixedAttention:
    """Give the assigned heads their patterns (replacing earlier ones) and record them in the config."""
    previous = getattr(model, "_prunebert_fixed_attention", None)
    if isinstance(previous, FixedAttention):
        previous.remove()
    fixed = FixedAttention(model, assignment)
    model.__dict__["_prunebert_fixed_attention"] = fixed  # a plain attribute, not a submodule
    record = {str(layer): {str(h): p for h, p in hs.items()} for layer, hs in fixed.assignment.items()}
    setattr(model.config, CONFIG_KEY, {"version": 1, "heads": record})
    return fixed


def fix_heads(model: PreTrainedModel, config: FixedAttentionConfig) -> FixedAttention:
    """Resolve `config` against the model's layers and heads and apply it.

    A model that already has fixed heads (from its checkpoint) keeps them only if `config` asks for the same.
    """
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    wanted = resolve_heads(config, layers, heads)
    existing = assignment_of(model)
    if existing is not None and existing != wanted:
        raise PrunebertError(
            "the model already has other fixed attention heads (from its checkpoint); omit fixed_attention "
            "to keep them, or start from a model without them"
        )
    return apply_fixed_attention(model, wanted)


def restore_fixed_attention(model: PreTrainedModel) -> FixedAttention | None:
    """Re-apply the fixed heads recorded in a loaded model's config (None if it has none)."""
    assignment = assignment_of(model)
    return apply_fixed_attention(model, assignment) if assignment is not None else None
