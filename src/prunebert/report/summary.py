"""The report's first screen: the best model at each sparsity of each task (mean ± sd over seeds where the
study was run with several), and the speed of the models that were timed."""

from __future__ import annotations

from typing import Any

import numpy as np

from prunebert.report.data import STAGE_ORDER, Section, StudyResults, test_metrics

__all__ = ["best_per_sparsity", "headline", "speed_rows"]

#: the comparison table's columns that the speed summary keeps, by heading
_SPEED_COLUMNS = (
    "task",
    "stage",
    "method",
    "target sparsity",
    "memory, sparse storage (% of dense)",
    "inference speed (x dense)",
    "performance (% of dense)",
)


def _value(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} ({len(values)} seeds)"


def best_per_sparsity(res: StudyResults) -> list[list[str]]:
    """Per task and sparsity, the (method, stage) with the best mean test metric and its % of its stage's
    dense model; the first row is the heading."""
    groups = test_metrics(res)
    metric = {row["task"]: row["metric"] for row in res.cells}
    rows = [["task", "sparsity", "best model", "test metric", "% of dense", "next best"]]
    for task in res.tasks():
        for sparsity in sorted({k[3] for k in groups if k[0] == task}):
            ranked = sorted(
                (k for k in groups if k[0] == task and k[3] == sparsity),
                key=lambda k: (-float(np.mean(groups[k])), STAGE_ORDER.index(k[1])),
            )
            best = ranked[0]
            dense = groups.get((task, best[1], "dense", 0.0))
            relative = f"{100 * np.mean(groups[best]) / np.mean(dense):.1f}%" if dense else ""
            runner = ranked[1] if len(ranked) > 1 else None
            rows.append(
                [
                    task,
                    f"{100 * sparsity:g}%",
                    f"{best[2]} ({best[1]})",
                    f"{metric[task]} {_value(groups[best])}",
                    relative,
                    f"{runner[2]} ({runner[1]}): {np.mean(groups[runner]):.4f}" if runner else "",
                ]
            )
    return rows


def speed_rows(sections: list[Section]) -> list[list[str]]:
    """The rows of the comparison table whose inference speed was measured (heading first), else []."""
    table = next((s.table for s in sections if s.name == "comparison" and s.table), None)
    if not table:
        return []
    index = [table[0].index(c) for c in _SPEED_COLUMNS if c in table[0]]
    speed = table[0].index("inference speed (x dense)")
    timed = [row for row in table[1:] if row[speed] not in ("", "not measured")]
    index = [i for i in index if any(row[i] for row in timed)]  # e.g. memory, when the models are gone
    return [[table[0][i] for i in index], *([row[i] for i in index] for row in timed)] if timed else []


def headline(res: StudyResults) -> str:
    """One sentence: what the study is and how many seeds it averages."""
    study: dict[str, Any] = res.table.get("study", {})
    seeds = [s for s in res.seeds() if s is not None]
    seed_text = f"{len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 else "one seed"
    return (
        f"{study.get('model', 'the model')} pruned by {', '.join(res.methods()) or 'no method'} on "
        f"{', '.join(res.tasks())}; {len(res.cells)} cells, {seed_text}."
    )
