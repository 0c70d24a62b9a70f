"""Run a study: every planned run in order (finished ones reused), the aggregate rewritten after each.

Several `prunebert study` commands on one recipe share the work (one per core or machine on a shared
disk): each claims a run by locking its directory, skips runs another live command holds, starts a run
only once the runs it reads (its starting model, its teacher) have finished, and waits while every run
left is held or waits on a held one.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prunebert.io import DirectoryInUseError, atomic_path, lock_dir, unlock_dir
from prunebert.recipes import dump_recipe
from prunebert.shrink.stage import ShrinkRunConfig, run_shrink_stage
from prunebert.stages.runner import finished_run, run_stage
from prunebert.study.config import STUDY_FILE, StudyConfig
from prunebert.study.plan import PlannedRun, RunConfig, StudyPlan, study_plan
from prunebert.study.results import aggregate, write_tables

__all__ = ["run_study"]


def _needs(plan: StudyPlan) -> dict[str, set[str]]:
    """Run key -> keys of the planned runs it reads: its starting model and its distillation teacher."""
    by_dir = {str(r.config.output_dir): r.key for r in plan.runs}
    needs = {}
    for run in plan.runs:
        distill = getattr(run.config, "distill", None)
        reads = {str(run.config.model), str(getattr(distill, "teacher", ""))}
        needs[run.key] = {by_dir[path] for path in reads if path in by_dir}
    return needs


def _run(config: RunConfig) -> dict[str, Any]:
    return run_shrink_stage(config) if isinstance(config, ShrinkRunConfig) else run_stage(config)


def run_study(cfg: StudyConfig, poll_s: float = 30.0) -> dict[str, Any]:
    """Run (or reuse) every run of the grid, printing progress to stderr; returns the aggregate table."""
    plan = study_plan(cfg)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STUDY_FILE) as tmp:
        tmp.write_text(dump_recipe(cfg))
    needs, index = _needs(plan), {r.key: i for i, r in enumerate(plan.runs, 1)}
    results: dict[str, dict[str, Any]] = {}
    executed, started, waiting, written = 0, time.time(), False, -1
    table: dict[str, Any] = {}

    def progress(run: PlannedRun, note: str = "") -> None:
        line = f"[study {index[run.key]}/{len(plan.runs)}] {run.label} -> {run.config.output_dir}{note}"
        print(line, file=sys.stderr, flush=True)

    while True:
        pending = []
        for run in plan.runs:
            if run.key not in results:
                done = finished_run(run.config)
                if done is None:
                    pending.append(run)
                else:
                    results[run.key] = done
                    progress(run, " (finished: reused)")
        if len(results) != written:
            table = aggregate(cfg.model_dump(mode="json"), plan.cells, results, out)
            table.update(runs_total=len(plan.runs), runs_executed=executed, elapsed_s=time.time() - started)
            write_tables(out, table)
            written = len(results)
        ready = [r for r in pending if needs[r.key] <= results.keys()]
        for run in ready:
            try:
                lock_dir(run.config.output_dir)  # claimed: another command skips it
            except DirectoryInUseError:
                continue
            done = finished_run(run.config)  # another command may have finished it since we looked
            if done is None:
                progress(run)
                done = _run(run.config)
                executed += 1
            else:
                unlock_dir(run.config.output_dir)
                progress(run, " (finished: reused)")
            results[run.key], waiting = done, False
            break
        else:
            if not pending:
                return table
            if not waiting:
                print(
                    f"[study] {len(pending)} runs left, each running in another command or waiting for one "
                    f"that is; checking again every {poll_s:g} s",
                    file=sys.stderr,
                    flush=True,
                )
            waiting = True
            time.sleep(poll_s)
