"""The look shared by every figure: panel grids, one colour per arm, axis labels, a legend below."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["figure_legend", "method_colors", "panel_grid", "save_figure", "style_axes"]


def method_colors(names: Sequence[str]) -> dict[str, Any]:
    """A fixed tab10 colour per name, in the given order."""
    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def panel_grid(n: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Axes]]:
    """A figure (no pyplot state) with `n` panels, at most three per row."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def style_axes(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title and a light grid, the same on every plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)


def figure_legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend below all panels, every label once."""
    labels: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    fig.legend(list(labels.values()), list(labels), loc="outside lower center", ncol=min(4, len(labels)))


def save_figure(fig: Figure, png: Path) -> Path:
    """Write `png` for the page and an SVG beside it (same name) for papers and slides; returns `png`."""
    fig.savefig(png, dpi=130)
    fig.savefig(png.with_suffix(".svg"), metadata={"Date": None})  # no timestamp: same input, same file
    return png
