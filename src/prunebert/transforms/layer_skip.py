"""Encoder layers skipped at inference: the depth pruning of LayerDrop (Fan, Grave & Joulin 2019).

A skipped layer hands its input hidden states on unchanged, which is exactly what removing it from the
encoder does and what a LayerDrop-trained network learned to tolerate. Zeroing the layer's weights is not
the same: its biases and its residual LayerNorms would still act. The skip shadows the layer's `forward`
with `passthrough` on that one instance (the class, the other layers and the state dict are untouched;
accelerate's `add_hook_to_module` shadows `forward` the same way), and the model's config records them as

    "prunebert_skipped_layers": {"version": 1, "layers": [1, 3]}        (current layer numbers)

so `prunebert.models.load_model` skips them again after loading; the saved model carries its modeling
code for plain transformers (`prunebert.transforms.custom_code`). A model built from the plain config
needs `restore_skipped_layers(model)`. `prunebert slim` removes skipped layers physically, which gives
the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from prunebert.errors import PrunebertError
from prunebert.structure import encoder_layers

__all__ = [
    "SKIP_KEY",
    "passthrough",
    "renumber_skipped",
    "restore_skipped_layers",
    "set_forward",
    "skip_layers",
    "skipped_layers",
]

SKIP_KEY = "prunebert_skipped_layers"


def passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A skipped encoder layer: (B, T, H) in, the same tensor out (BERT-family layers return a tensor)."""
    return hidden_states


def set_forward(layer: nn.Module, forward: Callable[..., Any] | None) -> None:
    """Shadow `layer.forward` on this instance (None: back to the class's forward)."""
    if forward is None:
        layer.__dict__.pop("forward", None)
    else:
        layer.forward = forward


def skipped_layers(config: PretrainedConfig) -> list[int]:
    """The layers `config` records as skipped (current numbers), [] if none."""
    entry = getattr(config, SKIP_KEY, None)
    return list(entry["layers"]) if isinstance(entry, dict) else []


def _check(layers: Sequence[int], count: int, source: str) -> list[int]:
    chosen = sorted(set(layers))
    ok = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count for i in chosen)
    if not ok or len(chosen) >= count:
        raise PrunebertError(
            f"{source}: cannot skip layers {list(layers)} of a {count}-layer encoder; give distinct "
            f"numbers from 0 to {count - 1} and keep at least one layer"
        )
    return chosen


def skip_layers(model: nn.Module, layers: Sequence[int]) -> None:
    """Skip `layers` (current numbers; added to those already skipped) and record them in the config."""
    modules = encoder_layers(model)[1]
    config = getattr(model, "config")  # noqa: B009  (any model with a config)
    chosen = _check([*skipped_layers(config), *layers], len(modules), "skip_layers")
    for i in chosen:
        set_forward(modules[i], passthrough)
    setattr(config, SKIP_KEY, {"version": 1, "layers": chosen})


def restore_skipped_layers(model: nn.Module) -> list[int]:
    """Skip again the layers recorded in the model's config (after loading); returns them."""
    config = getattr(model, "config", None)
    entry = getattr(config, SKIP_KEY, None)
    if entry is None:
        return []
    if not isinstance(entry, dict) or entry.get("version") != 1 or not isinstance(entry.get("layers"), list):
        raise PrunebertError(f"unreadable {SKIP_KEY} entry in config.json; save the model again")
    modules = encoder_layers(model)[1]
    chosen = _check(entry["layers"], len(modules), f"{SKIP_KEY} in config.json")
    for i in chosen:
        set_forward(modules[i], passthrough)
    return chosen


def renumber_skipped(config: PretrainedConfig, kept: Sequence[int]) -> None:
    """After only the layers `kept` (old numbers, in order) remain: renumber the entry, or drop it."""
    new_number = {old: new for new, old in enumerate(kept)}
    layers = [new_number[i] for i in skipped_layers(config) if i in new_number]
    if layers:
        setattr(config, SKIP_KEY, {"version": 1, "layers": layers})
    elif hasattr(config, SKIP_KEY):
        delattr(config, SKIP_KEY)
