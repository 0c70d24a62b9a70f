"""Metrics against sparsity: downstream (Gordon et al. 2020 Fig. 1), MLM (Guo et al. 2019 Fig. 2), and
the final training loss ("cannot fit": Gordon et al. 2020, Section 5)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from prunebert.report.data import STAGE_ORDER, Section, Skip, StudyResults
from prunebert.report.plotting import figure_legend, method_colors, panel_grid, save_figure, style_axes

__all__ = ["metric_vs_sparsity", "mlm_vs_sparsity", "seeds_note", "series", "train_loss_vs_sparsity"]

STAGE_STYLE = {"pretrain": ("-", "o"), "finetune": ("--", "s"), "after-finetune": (":", "^")}
SPARSITY_LABEL = "target sparsity of the encoder matrices (%)"


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    """Sparsity (%), mean and standard deviation of `key` over the rows (seeds) at each sparsity."""
    by_x: dict[float, list[float]] = {}
    for row in rows:
        if row.get(key) is not None:
            by_x.setdefault(row["sparsity"] * 100, []).append(float(row[key]))
    xs = sorted(by_x)
    return (
        xs,
        [float(np.mean(by_x[x])) for x in xs],
        [float(np.std(by_x[x], ddof=1)) if len(by_x[x]) > 1 else 0.0 for x in xs],
    )


def _line(ax: Axes, rows: list[dict[str, Any]], key: str, **style: Any) -> None:
    """Mean over seeds, with error bars of one standard deviation where there are several seeds."""
    x, y, sd = series(rows, key)
    ax.errorbar(x, y, yerr=sd if any(sd) else None, capsize=3, **style)


def _dense_level(ax: Axes, rows: list[dict[str, Any]], key: str, **style: Any) -> None:
    """A dense baseline as a horizontal line at its mean, shaded by ± one standard deviation over seeds."""
    _, (mean,), (sd,) = series(rows, key)
    ax.axhline(mean, **style)
    if sd:
        ax.axhspan(mean - sd, mean + sd, color=style.get("color", "0.45"), alpha=0.12, lw=0)


def _task_panel(ax: Axes, res: StudyResults, task: str, key: str, colors: dict[str, Any]) -> None:
    """One line per (stage, arm) from its dense point, and each stage's dense level as a grey line."""
    rows = [r for r in res.replicated() if r["task"] == task and r.get(key) is not None]
    stages = [s for s in STAGE_ORDER if any(r["stage"] == s for r in rows)]
    for stage in stages:
        style, marker = STAGE_STYLE[stage]
        dense = [r for r in rows if r["stage"] == stage and r["method"] == "dense"]
        if dense:
            _dense_level(ax, dense, key, color="0.45", ls=style, lw=1.2, label=f"dense ({stage})")
        for method in res.methods():
            arm = [r for r in rows if r["stage"] == stage and r["method"] == method]
            if arm:
                _line(
                    ax,
                    dense + arm,
                    key,
                    ls=style,
                    marker=marker,
                    color=colors[method],
                    label=f"{method} ({stage})",
                )


def seeds_note(res: StudyResults) -> str:
    """What a caption says about seeds: error bars and their meaning when there are several."""
    n = len(res.seeds())
    if n == 1:
        return ""
    return f" Points are the mean over {n} seeds; error bars and shaded bands: ± one standard deviation."


def _per_task_figure(
    res: StudyResults, key: str, ylabel: Callable[[str], str], title: str, out: Path
) -> Path:
    tasks = res.tasks()
    if not any(r.get(key) is not None for r in res.cells):
        raise Skip(f"no finished cell has {key!r}")
    colors = method_colors(res.methods())
    fig, axes = panel_grid(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        _task_panel(ax, res, task, key, colors)
        metric = next(r["metric"] for r in res.cells if r["task"] == task)
        style_axes(ax, SPARSITY_LABEL, ylabel(metric), f"{task}: {title}")
    figure_legend(fig, axes)
    save_figure(fig, out)
    return out


def metric_vs_sparsity(res: StudyResults, out: Path) -> Section:
    """Test metric of every task against sparsity, per arm and stage, with the dense levels."""
    png = _per_task_figure(res, "test_metric", lambda m: f"test {m}", "test metric vs sparsity", out)
    return Section(
        "metric_vs_sparsity",
        "Downstream metric vs sparsity (Gordon et al. 2020, Fig. 1)",
        png,
        "Test metric of each task after fine-tuning, one line per pruning method (colour) and stage "
        "(line style: solid = pruned during pre-training then transferred with the mask fixed, dashed = "
        "pruned while fine-tuning, dotted = pruned after dense fine-tuning then recovered). Grey lines: the "
        "dense model of each stage with the same training budget; every line starts at its dense point."
        + seeds_note(res),
    )


def train_loss_vs_sparsity(res: StudyResults, out: Path) -> Section:
    """Per task, the final training loss next to the dev and test metric, all against sparsity."""
    if not any(r.get("final_train_loss") is not None for r in res.cells):
        raise Skip("no finished cell has a logged training loss")
    tasks, colors = res.tasks(), method_colors(res.methods())
    fig, axes = panel_grid(3 * len(tasks))  # one row per task
    panels = (("final_train_loss", "final training loss"), ("dev_metric", "dev"), ("test_metric", "test"))
    for t, task in enumerate(tasks):
        metric = next(r["metric"] for r in res.cells if r["task"] == task)
        for ax, (key, name) in zip(axes[3 * t : 3 * t + 3], panels, strict=True):
            _task_panel(ax, res, task, key, colors)
            label = name if key == "final_train_loss" else f"{name} {metric}"
            style_axes(ax, SPARSITY_LABEL, label, f"{task}: {label}")
    figure_legend(fig, axes)
    save_figure(fig, out)
    return Section(
        "train_loss_vs_sparsity",
        'Downstream training loss vs sparsity, next to dev and test ("cannot fit", Gordon et al. 2020)',
        out,
        "Per task, left: the mean task training loss logged over the last 20% of each fine-tuning run (the "
        "model at its final sparsity; for distilled runs the task loss alone, not the weighted total); "
        "middle and right: the dev and test metric of the same runs. Where the training loss rises with "
        "sparsity the pruned model can no longer fit the task's training data (Gordon et al. 2020, Sec. 5); "
        "where only dev/test fall, it fits but generalises worse." + seeds_note(res),
    )


def mlm_vs_sparsity(res: StudyResults, out: Path) -> Section:
    """MLM loss and masked-token accuracy of the pre-training runs against sparsity."""
    runs = res.replicated("pretrain_runs")
    if not runs:
        raise Skip("the study has no finished pretrain (MLM) runs")
    colors = method_colors(res.methods())
    dense = [r for r in runs if r["method"] == "dense"]
    panels = [("mlm_loss", "MLM loss"), ("mlm_accuracy", "masked-token accuracy")]
    if any(r.get("representation_cosine") is not None for r in runs):
        panels.append(("representation_cosine", "embedding cosine to the start"))
    fig, axes = panel_grid(len(panels))
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        level = [r for r in dense if r.get(key) is not None]
        if level:
            _dense_level(ax, level, key, color="0.45", lw=1.2, label="dense (same MLM steps)")
        for method, color in colors.items():
            arm = [r for r in runs if r["method"] == method and r.get(key) is not None]
            if arm:
                _line(ax, level + arm, key, marker="o", color=color, label=method)
        style_axes(ax, SPARSITY_LABEL, ylabel, f"held-out {ylabel} vs sparsity")
    if dense and dense[0].get("mlm_loss_before") is not None:
        axes[0].axhline(float(dense[0]["mlm_loss_before"]), color="0.7", ls=":", label="before the MLM stage")
    figure_legend(fig, axes)
    save_figure(fig, out)
    return Section(
        "mlm_vs_sparsity",
        "Pre-training loss and masked-token accuracy vs sparsity (Guo et al. 2019, Fig. 2)",
        out,
        "Masked-LM loss and accuracy on the held-out blocks of the MLM text at the end of the pre-training "
        "stage, per pruning method; grey: the dense model after the same number of MLM steps, dotted: "
        "the starting point of the stage. Where measured, the third panel is how close the sentence "
        "embeddings (mean-pooled last hidden states) stay to the starting model's: mean cosine over the "
        "held-out blocks." + seeds_note(res),
    )
