"""Run a study: every planned run in order (finished ones reused), the aggregate rewritten after each."""

from __future__ import annotations

import sys
import time
from typing import Any

from prunebert.io import atomic_path
from prunebert.recipes import dump_recipe
from prunebert.stages.runner import finished_run, run_stage
from prunebert.study.config import STUDY_FILE, StudyConfig
from prunebert.study.plan import study_plan
from prunebert.study.results import aggregate, write_tables

__all__ = ["run_study"]


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or reuse) every run of the grid, printing progress to stderr; returns the aggregate table."""
    plan = study_plan(cfg)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STUDY_FILE) as tmp:
        tmp.write_text(dump_recipe(cfg))
    results: dict[str, dict[str, Any]] = {}
    executed, started = 0, time.time()
    table: dict[str, Any] = {}
    for i, run in enumerate(plan.runs, 1):
        done = finished_run(run.config)
        note = " (finished: reused)" if done is not None else ""
        line = f"[study {i}/{len(plan.runs)}] {run.label} -> {run.config.output_dir}{note}"
        print(line, file=sys.stderr, flush=True)
        results[run.key] = run_stage(run.config) if done is None else done
        executed += done is None
        table = aggregate(cfg.model_dump(mode="json"), plan.cells, results, out)
        table.update(runs_total=len(plan.runs), runs_executed=executed, elapsed_s=time.time() - started)
        write_tables(out, table)
    return table
