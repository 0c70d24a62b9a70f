"""A model's task metric measured in the runtime it is deployed in, not in PyTorch fp32.

An int8 export (ONNX Runtime, OpenVINO) or a bf16 cast changes the predictions; reporting the fp32
model's accuracy beside a speed-up measured in int8 would pair a speed with an accuracy the fast model
does not have. `score_in_runtime` builds the same runner `prunebert bench` times (the same export,
int8 calibration and precision) and scores it on a whole split of the task.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prunebert.deploy.bench_runners import VARIANTS, RunnerFactory, RunnerSettings, check_variants
from prunebert.deploy.inference import split_batches
from prunebert.errors import PrunebertError
from prunebert.metrics import compute_metrics

if TYPE_CHECKING:
    from prunebert.data import TaskData

__all__ = ["score_in_runtime"]


def score_in_runtime(
    model: str,
    runtime: str,
    data: TaskData,
    *,
    calibration: str | None,
    split: str = "test",
    limit: int | None = None,
    threads: int = 1,
    max_length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """`model`'s metrics on `split` of `data`, predicted by `runtime` (a `prunebert bench` variant).

    `calibration` names the task an int8 export is calibrated on (None: the data-free int8 kinds), as
    `prunebert bench --calibration` does. Returns the metrics, the split and its size, and how the
    runner was built (file, int8 method, precision).
    """
    if runtime not in VARIANTS:
        raise PrunebertError(f"unknown runtime {runtime!r}; pass one of: {', '.join(VARIANTS)}")
    if data.kind == "qa":
        raise PrunebertError("scoring in a runtime handles classification and regression, not QA")
    check_variants([runtime], explicit=True)  # a missing runtime is an error naming its extra
    settings = RunnerSettings(threads=threads, seq_len=max_length, calibration=calibration, seed=seed)
    with tempfile.TemporaryDirectory(prefix="prunebert-score-") as scratch:
        factory = RunnerFactory(settings, [runtime], Path(scratch))
        inference = factory.model(model)
        if inference.output_name != "logits" or inference.new_head:
            raise PrunebertError(f"{model} has no trained task head to score; fine-tune it first")
        built = factory.build(model, runtime, batch_size)
        batches = split_batches(data, inference, split, limit, batch_size, max_length)
        predictions = np.concatenate([built.run(batch) for batch in batches.batches])
    metrics = compute_metrics(batches.metric, predictions, batches.labels)
    return {
        "runtime": runtime,
        "split": split,
        "examples": len(batches.labels),
        "metrics": metrics,
        "runner": built.info,
    }
