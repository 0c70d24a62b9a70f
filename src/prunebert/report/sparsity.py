"""Where a pruned model's zeros are: sparsity per layer and module, and the Q/K mask patterns
(Guo et al. 2019, Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from prunebert.report.data import Chosen, Section, Skip, layer_of, mask_set
from prunebert.report.plotting import save_figure, style_axes

__all__ = ["module_sparsity", "qk_patterns"]

ROLE_ORDER = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")


def _per_layer(chosen: Chosen) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Layers, and role -> layer -> sparsity (%) of the chosen mask file."""
    masks, roles = mask_set(chosen.masks)
    table: dict[str, dict[int, float]] = {}
    for key, mask in masks.items():
        table.setdefault(roles[key], {})[layer_of(key)] = 100.0 * (1.0 - mask.float().mean().item())
    layers = sorted({layer for by_layer in table.values() for layer in by_layer})
    return layers, table


def module_sparsity(chosen: Chosen, out: Path) -> Section:
    """Grouped bars: one group per layer (embeddings first, if pruned), one bar per module role."""
    layers, table = _per_layer(chosen)
    if not table:
        raise Skip(f"the mask file of {chosen.label} holds no masks")
    roles = [r for r in ROLE_ORDER if r in table] + sorted(set(table) - set(ROLE_ORDER))
    width = 0.8 / len(roles)
    fig = Figure(figsize=(max(6.0, 1.1 * len(layers) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(layers))
    for i, role in enumerate(roles):
        values = [table[role].get(layer, np.nan) for layer in layers]
        ax.bar(x + (i - (len(roles) - 1) / 2) * width, values, width, label=role)
    ax.set_xticks(x, ["emb" if layer < 0 else str(layer) for layer in layers])
    ax.set_ylim(0, 100)
    style_axes(ax, "encoder layer", "sparsity (% of weights zero)", f"per-module sparsity: {chosen.label}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    save_figure(fig, out)
    return Section(
        "module_sparsity",
        "Per-layer and per-module sparsity",
        out,
        f"Fraction of zero weights in each pruned matrix of {chosen.label}, read from its mask file "
        "(query/key/value/attention output of self-attention, FFN in/out).",
    )


def qk_patterns(chosen: Chosen, layers: list[int] | None, out: Path) -> Section:
    """The query and key masks of the chosen layers as black (kept) / white (pruned) images."""
    masks, roles = mask_set(chosen.masks)
    found = {(layer_of(k), roles[k]): m for k, m in masks.items() if roles[k] in ("query", "key")}
    available = sorted({layer for layer, _ in found})
    if not available:
        raise Skip(f"{chosen.label} has no pruned query/key matrices")
    wanted = layers if layers is not None else sorted({available[0], available[-1]})
    missing = [layer for layer in wanted if layer not in available]
    if missing:
        raise Skip(f"layer {missing[0]} has no query/key mask (pruned layers: {available})")
    fig = Figure(figsize=(8.0, 3.9 * len(wanted)), layout="constrained")
    axes = fig.subplots(len(wanted), 2, squeeze=False)
    for row, layer in zip(axes, wanted, strict=True):
        for ax, role in zip(row, ("query", "key"), strict=True):
            mask = found[(layer, role)].float().numpy()  # (out_features, in_features), 1 = kept
            ax.imshow(mask, cmap="Greys", vmin=0.0, vmax=1.0, interpolation="antialiased", aspect="auto")
            title = f"layer {layer} {role}: {100 * (1 - mask.mean()):.1f}% pruned"
            style_axes(ax, "input feature", "output feature", title)
            ax.grid(False)
    save_figure(fig, out)
    return Section(
        "qk_patterns",
        "Sparsity pattern of the query and key matrices (Guo et al. 2019, Fig. 3)",
        out,
        f"Masks of {chosen.label}: black = kept weight, white = pruned; rows are output features "
        "(the projection's output), columns input features (the hidden state).",
    )
