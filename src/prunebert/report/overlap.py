"""Do different tasks prune the same weights, and the same as pre-training? (Gordon et al. 2020, Section 6)

Overlap of two masks is the Jaccard index of their pruned sets, |A & B| / |A | B|, over all target
weights both prune. Two independent random masks of sparsity s overlap s / (2 - s) on average.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prunebert.report.data import Section, Skip, StudyResults, mask_set
from prunebert.report.plotting import panel_grid, save_figure

__all__ = ["fitted_range", "jaccard", "mask_overlap", "overlap_matrix"]


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Jaccard index of the pruned (False) entries of two mask sets, over the weights both hold."""
    inter = union = 0
    for key in sorted(set(a) & set(b)):
        pa, pb = ~a[key], ~b[key]
        inter += int((pa & pb).sum().item())
        union += int((pa | pb).sum().item())
    return inter / union if union else float("nan")


def overlap_matrix(masks: dict[str, dict[str, torch.Tensor]]) -> np.ndarray:
    """(n, n) Jaccard indices between every pair of named mask sets."""
    names = list(masks)
    out = np.ones((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            out[i, j] = out[j, i] = jaccard(masks[a], masks[names[j]])
    return out


def _masks_at(res: StudyResults, method: str, sparsity: float) -> dict[str, dict[str, torch.Tensor]]:
    """Named mask sets of `method` at `sparsity`: the pre-training mask, then each task's per stage."""
    found: dict[str, Path] = {}
    for run in res.pretrain_runs:
        path = res.path(run.get("masks"))
        if run["method"] == method and abs(run["sparsity"] - sparsity) < 1e-9 and path:
            found["pre-training (MLM)"] = path
    for row in res.cells:  # pretrain-stage cells reuse the MLM mask: it is already in
        path = res.path(row.get("masks"))
        if (
            row["method"] == method
            and abs(row["sparsity"] - sparsity) < 1e-9
            and row["stage"] != "pretrain"
            and path
        ):
            found[f"{row['task']} ({row['stage']})"] = path
    return {name: mask_set(path)[0] for name, path in found.items()}


def fitted_range(matrix: np.ndarray) -> tuple[float, float]:
    """Colour limits fitted to the off-diagonal overlaps (the diagonal is 1 by definition), with a margin
    of a tenth of their spread below, so overlaps of 0.96-1.00 span the whole colour map, not its top."""
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    low = float(off.min()) if off.size else 0.0
    low = max(0.0, low - 0.1 * (1.0 - low))
    return (min(low, 0.99), 1.0)


def mask_overlap(res: StudyResults, method: str, out: Path) -> Section:
    """One Jaccard heatmap per sparsity of `method` that has at least two masks."""
    levels = sorted({r["sparsity"] for r in res.cells if r["method"] == method and r["sparsity"] > 0})
    panels = [(s, m) for s in levels if len(m := _masks_at(res, method, s)) >= 2]
    if not panels:
        raise Skip(f"fewer than two mask files of {method} at any one sparsity")
    fig, axes = panel_grid(len(panels), width=5.6, height=4.8)
    table = [["sparsity", "mask A", "mask B", "Jaccard", "chance (independent random)"]]
    for ax, (sparsity, masks) in zip(axes, panels, strict=True):
        names, matrix = list(masks), overlap_matrix(masks)
        vmin, vmax = fitted_range(matrix)
        image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                color = "black" if (matrix[i, j] - vmin) / (vmax - vmin) > 0.6 else "white"  # on light cells
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=color, fontsize=8)
                if j > i:
                    chance = f"{sparsity / (2 - sparsity):.2f}"
                    table.append([f"{sparsity:.0%}", names[i], names[j], f"{matrix[i, j]:.3f}", chance])
        chance = sparsity / (2 - sparsity)
        ax.set_title(f"{method}, {sparsity:.0%} sparsity\n(chance overlap {chance:.2f})", fontsize=11)
        fig.colorbar(image, ax=ax, shrink=0.8, label="Jaccard index of pruned weights")
    save_figure(fig, out)
    note = (
        " Random masks are seeded per weight name, so they coincide across tasks by construction."
        if method == "random"
        else ""
    )
    return Section(
        "mask_overlap",
        "Overlap of the masks found on different tasks and in pre-training (Gordon et al. 2020)",
        out,
        f"Jaccard index |A∩B| / |A∪B| of the pruned weights of two {method} masks of the same sparsity: "
        "the pre-training mask and the masks found while fine-tuning (or after fine-tuning) on each task. "
        "'chance' is the expected overlap of two independent random masks, s / (2 - s). Each panel's "
        "colour scale spans its own overlaps (see its colour bar), not 0-1." + note,
        table=table,
    )
