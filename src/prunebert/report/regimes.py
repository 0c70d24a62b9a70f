"""Gordon et al.'s three regimes side by side: prune once during pre-training and transfer the mask to
every task, prune while fine-tuning each task, or prune the fine-tuned model after the fact.

Per task, method and sparsity, each stage's test metric (mean ± sd where the study was run with several
seeds) and its change in points against one reference: the dense model fine-tuned on the task (the
`finetune` stage's dense cell; a study without that stage is measured against each stage's own dense
cell). The dense rows show what each stage does before pruning (e.g. what continued MLM pre-training did
to the dense model). The last column is the question of the transfer regime: pretrain minus finetune at
the same sparsity and the same downstream budget, positive when pruning once upstream did better.
Metrics are fractions (accuracy, F1, ...), so a point is 0.01.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from prunebert.report.data import STAGE_ORDER, Section, Skip, StudyResults, test_metrics

__all__ = ["regime_rows", "regime_table"]

REFERENCE_STAGE = "finetune"


def _mean(values: list[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _metric(values: list[float] | None) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}"


def _points(value: float | None, reference: float | None) -> str:
    return "" if value is None or reference is None else f"{100 * (value - reference):+.1f}"


def regime_rows(res: StudyResults) -> list[list[str]]:
    """The table (heading first): task, method, sparsity, then per stage the metric (x100) and its change
    against the reference dense model in points, then pretrain - finetune in points."""
    return _rows(res, test_metrics(res))


def _rows(res: StudyResults, groups: dict[tuple[str, str, str, float], list[float]]) -> list[list[str]]:
    stages = [s for s in STAGE_ORDER if any(k[1] == s for k in groups)]
    if not stages:
        raise Skip("the study has no finished cells with a test metric")
    heading = ["task", "method", "sparsity"]
    for stage in stages:
        heading += [stage, f"{stage} vs dense (pt)"]
    compare = "pretrain" in stages and "finetune" in stages
    if compare:
        heading.append("pretrain - finetune (pt)")
    rows = [heading]
    order = list(dict.fromkeys(k[2] for k in groups))  # methods in the order of the study
    for task in res.tasks():
        pruned = {(k[2], k[3]) for k in groups if k[0] == task and k[2] != "dense"}
        arms = [("dense", 0.0), *sorted(pruned, key=lambda arm: (order.index(arm[0]), arm[1]))]
        shared = _mean(groups.get((task, REFERENCE_STAGE, "dense", 0.0)))
        for method, sparsity in arms:
            row = [task, method, f"{100 * sparsity:g}%"]
            means: dict[str, float | None] = {}
            for stage in stages:
                values = groups.get((task, stage, method, sparsity))
                reference = shared if shared is not None else _mean(groups.get((task, stage, "dense", 0.0)))
                means[stage] = _mean(values)
                row += [_metric(values), _points(means[stage], reference)]
            if compare:
                row.append(_points(means["pretrain"], means["finetune"]))
            rows.append(row)
    return rows


def regime_table(res: StudyResults, out: Path) -> Section:
    """Write `regimes.csv` into `out`'s directory and return the table as a report section."""
    groups = test_metrics(res)
    rows = _rows(res, groups)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    out.with_name("regimes.csv").write_text(buffer.getvalue())
    reference = (
        "the dense model fine-tuned on the task (finetune stage)"
        if any(k[1] == REFERENCE_STAGE and k[2] == "dense" for k in groups)
        else "each stage's own dense model"
    )
    return Section(
        "regimes",
        "Prune once (pre-training) vs per task (fine-tuning) vs after fine-tuning",
        caption=(
            "Gordon et al.'s three regimes: each stage's test metric (x100; mean ± sd over seeds where "
            f"there are several) and its change in points against {reference}. The pretrain arm prunes "
            "once during MLM pre-training and fine-tunes every task with that mask fixed; the finetune arm "
            "prunes while fine-tuning each task; after-finetune prunes the fine-tuned model, then recovers. "
            "Last column: pretrain minus finetune at the same sparsity, positive when pruning once upstream "
            "did better. Also in regimes.csv beside this page."
        ),
        table=rows,
    )
