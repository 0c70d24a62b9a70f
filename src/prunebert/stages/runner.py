"""Run a stage from its config, or reuse the finished run already in its directory.

What the demo, the benchmarks and grids use to be resumable: a step whose `results.json` exists is read,
not re-run, but only if it was made by the same recipe; a stale directory is an error, never reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from prunebert.errors import PrunebertError
from prunebert.io import expect_mapping, read_json
from prunebert.stages.common import RESULTS_FILE
from prunebert.stages.finetune import FinetuneConfig, run_finetune
from prunebert.stages.pretrain import PretrainConfig, run_pretrain

__all__ = ["RunRecipe", "StageConfig", "finished_run", "run_or_reuse", "run_stage"]

StageConfig = PretrainConfig | FinetuneConfig


class RunRecipe(Protocol):
    """A run's recipe: where the run goes, and its JSON form (what a finished run's results record)."""

    @property
    def output_dir(self) -> Path: ...

    def model_dump(self, *, mode: Literal["json"]) -> dict[str, Any]: ...


def finished_run(config: RunRecipe) -> dict[str, Any] | None:
    """The results of a finished run of this recipe in its directory; None if it has not finished."""
    done = config.output_dir / RESULTS_FILE
    if not done.is_file():
        return None
    fix = "delete it (the run is re-run) or choose another output directory"
    results = expect_mapping(read_json(done, "results", fix), done, "results", fix)
    if results.get("recipe") != config.model_dump(mode="json"):
        raise PrunebertError(
            f"{config.output_dir} holds a finished run of another recipe; "
            "remove it or choose another output directory"
        )
    return results


def run_stage(config: StageConfig) -> dict[str, Any]:
    """Run (or resume from its last checkpoint) the stage `config` describes."""
    if isinstance(config, PretrainConfig):
        return run_pretrain(config)
    return run_finetune(config)


def run_or_reuse(config: StageConfig) -> dict[str, Any]:
    """The stage's results: read from a finished run of the same recipe, else run (or resume) it."""
    results = finished_run(config)
    return run_stage(config) if results is None else results
