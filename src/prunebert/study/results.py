"""The aggregate of a study: one flat row per grid cell, as `results.json` and `results.csv`.

Paths in the aggregate are relative to the study's directory, so a report can be made from a copy of it.
`final_train_loss` is the mean task training loss logged over the last 20% of a run's steps (the model at
its final sparsity): the "cannot fit" curve of Gordon et al. 2020 plots it against sparsity.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunebert.hardware import environment
from prunebert.io import atomic_path, write_json
from prunebert.masks import MASKS_FILE
from prunebert.metrics import PRIMARY_METRIC

if TYPE_CHECKING:
    from prunebert.study.plan import Cell

__all__ = [
    "CSV_FILE",
    "JSON_FILE",
    "aggregate",
    "cell_row",
    "final_train_loss",
    "format_cells",
    "mlm_row",
    "study_summary",
    "write_tables",
]

JSON_FILE = "results.json"
CSV_FILE = "results.csv"
FIRST_COLUMNS = (
    "task",
    "stage",
    "method",
    "sparsity",
    "achieved_sparsity",
    "metric",
    "dev_metric",
    "test_metric",
    "final_train_loss",
    "train_loss",
    "train_steps",
    "runtime_s",
    "mlm_loss",
    "mlm_accuracy",
    "mlm_perplexity",
    "run_dir",
    "model_dir",
    "masks",
    "mlm_run_dir",
    "mlm_masks",
    "start_dir",
)

#: pretrain metrics carried beside the MLM ones when the run has them: how close the sentence embeddings
#: stay to the dense starting model (cosine of mean-pooled states; mean and worst sequence), and the
#: distillation loss of a run distilled from it
PRETRAIN_EXTRAS = ("representation_cosine", "representation_cosine_min", "distill_loss")


def final_train_loss(train: Mapping[str, Any], tail: float = 0.2) -> float | None:
    """Mean logged task loss over the last `tail` of the steps (the last logged loss if none there).

    A distilled run logs its task loss apart (`loss_task`) from the weighted total (`loss`); the task
    loss is the one comparable with runs trained without a teacher.
    """
    history = [e for e in train.get("log_history", []) if "step" in e]
    key = "loss_task" if any("loss_task" in e for e in history) else "loss"
    logged = [(e["step"], e[key]) for e in history if key in e]
    if not logged:
        loss = train.get("train_loss")
        return float(loss) if loss is not None else None
    last = (1.0 - tail) * int(train.get("steps", logged[-1][0]))
    window = [loss for step, loss in logged if step >= last] or [logged[-1][1]]
    return float(sum(window) / len(window))


def _masks(key: str, root: Path) -> str | None:
    """The run's mask file, relative to the study directory, if it has one."""
    path = f"{key}/model/{MASKS_FILE}"
    return path if (root / path).is_file() else None


def mlm_row(key: str, method: str, result: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """MLM metrics of a pretrain run of arm `method`, with where its model and masks are."""
    recipe, metrics = result["recipe"], result["metrics"]
    pruning = recipe.get("pruning") or {}
    return {
        "method": method,
        "run_dir": key,
        "sparsity": float(pruning.get("sparsity", 0.0)),
        "achieved_sparsity": float(result["sparsity"]["overall"]),
        "mlm_loss": metrics["mlm_loss"],
        "mlm_accuracy": metrics["mlm_accuracy"],
        "mlm_perplexity": metrics["mlm_perplexity"],
        "mlm_loss_before": (result.get("metrics_before") or {}).get("mlm_loss"),
        **{key: metrics[key] for key in PRETRAIN_EXTRAS if key in metrics},
        "train_steps": result["train"]["steps"],
        "runtime_s": result["train"]["runtime_s"],
        "model_dir": f"{key}/model",
        "masks": _masks(key, root),
    }


def cell_row(cell: Cell, results: Mapping[str, Mapping[str, Any]], root: Path) -> dict[str, Any]:
    """One flat row: the cell, its dev/test metrics, training loss and (pretrain) MLM metrics."""
    result = results[cell.run]
    metric = result["task"]["metric"]
    primary = PRIMARY_METRIC.get(metric, metric)
    metrics = result["metrics"]
    row: dict[str, Any] = {
        "task": cell.task,
        "stage": cell.stage,
        "method": cell.method,
        "sparsity": cell.sparsity,
        "achieved_sparsity": float(result["sparsity"]["overall"]),
        "metric": primary,
        "dev_metric": metrics["dev"][primary],
        "test_metric": metrics["test"][primary],
        "final_train_loss": final_train_loss(result["train"]),
        "train_loss": result["train"].get("train_loss"),
        "train_steps": result["train"]["steps"],
        "runtime_s": result["train"]["runtime_s"],
        "run_dir": cell.run,
        "model_dir": f"{cell.run}/model",
        "masks": _masks(cell.run, root),
        "start_dir": cell.start,
    }
    for split in ("dev", "test"):
        row.update({f"{split}_{k}": v for k, v in metrics[split].items()})
    if cell.shrunk is not None and cell.shrunk in results:  # structured: no zeros, FLOPs removed
        shrunk = results[cell.shrunk]
        row.update(
            achieved_sparsity=float(shrunk["sparsity"]["overall"]),
            sparsity_measure=shrunk["sparsity"]["measure"],
            zero_step_dev_metric=shrunk["metrics"]["dev"][primary],
            zero_step_test_metric=shrunk["metrics"]["test"][primary],
            shrink_dir=cell.shrunk,
        )
    if cell.mlm is not None:
        mlm = mlm_row(cell.mlm, cell.method, results[cell.mlm], root)
        row.update(
            {k: mlm[k] for k in ("mlm_loss", "mlm_accuracy", "mlm_perplexity", *PRETRAIN_EXTRAS) if k in mlm}
        )
        row.update(mlm_run_dir=cell.mlm, mlm_masks=mlm["masks"])
    return row


def aggregate(
    study: dict[str, Any], cells: Iterable[Cell], results: Mapping[str, Mapping[str, Any]], root: Path
) -> dict[str, Any]:
    """Rows of every cell whose runs have finished, and every finished MLM run."""
    cells = list(cells)
    rows = [cell_row(c, results, root) for c in cells if c.run in results and (c.mlm or c.run) in results]
    mlm_runs = {c.mlm: c.method for c in cells if c.mlm is not None and c.mlm in results}
    return {
        "study": study,
        "complete": len(rows) == len(cells),
        "cells": rows,
        "pretrain_runs": [mlm_row(k, m, results[k], root) for k, m in mlm_runs.items()],
        "environment": environment(),
    }


def _csv(rows: list[dict[str, Any]]) -> str:
    extra = sorted({k for row in rows for k in row} - set(FIRST_COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*FIRST_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(root: Path, table: dict[str, Any]) -> None:
    """Write `results.json` and `results.csv` (one row per finished cell) into the study directory."""
    write_json(root / JSON_FILE, table)
    with atomic_path(root / CSV_FILE) as tmp:
        tmp.write_text(_csv(table["cells"]))


#: the columns of each cell in `prunebert study`'s JSON on stdout (results.json holds them all)
SUMMARY_COLUMNS = FIRST_COLUMNS[:9]


def study_summary(table: dict[str, Any], root: Path) -> dict[str, Any]:
    """What `prunebert study` prints on stdout: the run counts, where the tables are, each cell's numbers."""
    return {
        "output_dir": str(root),
        "results": str(root / JSON_FILE),
        "results_csv": str(root / CSV_FILE),
        "complete": table["complete"],
        "runs_total": table["runs_total"],
        "runs_executed": table["runs_executed"],
        "cells": [{k: row.get(k) for k in SUMMARY_COLUMNS} for row in table["cells"]],
    }


def format_cells(rows: list[dict[str, Any]]) -> str:
    """The cells as a plain-text table: task, stage, method, sparsity, dev/test metric, training loss."""
    lines = [
        f"{'task':<18} {'stage':<15} {'method':<14} {'sparsity':>8} {'dev':>7} {'test':>7} {'train loss':>10}"
    ]
    for r in rows:
        loss = "" if r["final_train_loss"] is None else f"{r['final_train_loss']:.4f}"
        lines.append(
            f"{r['task']:<18} {r['stage']:<15} {r['method']:<14} {r['achieved_sparsity']:>8.1%} "
            f"{r['dev_metric']:>7.4f} {r['test_metric']:>7.4f} {loss:>10}"
        )
    return "\n".join(lines)
