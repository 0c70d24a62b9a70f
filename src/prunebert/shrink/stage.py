"""`shrink` as a resumable run (what a study's after-finetune `shrink` arm runs): OUT/results.json like a
stage's, so a finished run is reused and its cell aggregated as any other.

The run's "sparsity" is structured: the fraction of the dense encoder's FLOPs removed (heads, FFN neurons,
whole layers), not a fraction of zero weights (the slimmed model has none); `sparsity.measure` says so.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from prunebert.errors import PrunebertError
from prunebert.hardware import environment
from prunebert.io import lock_dir, unlock_dir, write_json
from prunebert.shrink.config import ShrinkConfig
from prunebert.shrink.job import run_shrink, task_fields
from prunebert.stages.common import RESULTS_FILE
from prunebert.stages.evaluate import EvaluateConfig, run_evaluate

__all__ = ["ShrinkRunConfig", "run_shrink_stage"]


class ShrinkRunConfig(ShrinkConfig):
    """A `shrink` of `model` as a run: the options of `prunebert shrink` with the model they apply to."""

    model: str = Field(..., description="fine-tuned model (or run directory) to shrink")


def run_shrink_stage(cfg: ShrinkRunConfig) -> dict[str, Any]:
    """Shrink `cfg.model` into OUT, score the result on dev and test, write OUT/results.json."""
    if cfg.distill_steps:
        raise PrunebertError("a shrink run is retraining-free; recover in a following finetune run instead")
    out = cfg.output_dir
    lock_dir(out)
    started = time.perf_counter()
    report = run_shrink(cfg.model, ShrinkConfig(**cfg.model_dump(exclude={"model"})), overwrite=True)
    evaluation = EvaluateConfig(model=str(out / "model"), seed=cfg.seed, **task_fields(cfg))
    scored = run_evaluate(evaluation)
    choice = report["choice"]
    results = {
        "stage": "shrink",
        "recipe": cfg.model_dump(mode="json"),
        "task": scored["task"],
        "metrics": scored["metrics"],
        "sparsity": {
            "overall": 1.0 - choice["predicted_cost"] / choice["dense_cost"],
            "measure": f"fraction of the dense encoder's {choice['unit']} removed (heads, neurons, layers)",
        },
        "train": {"steps": 0, "runtime_s": time.perf_counter() - started, "log_history": []},
        "model_dir": str(out / "model"),
        "shrink": report,
        "environment": environment(),
    }
    write_json(out / RESULTS_FILE, results)
    unlock_dir(out)
    return results
