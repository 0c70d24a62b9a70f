"""`evaluate`: the metric a task calls for (accuracy, F1, MCC, Pearson/Spearman) on chosen splits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import DataCollatorWithPadding, Trainer

from prunebert.config import StrictModel
from prunebert.data import TaskData, load_task, tokenize_task
from prunebert.distributed import is_main_process
from prunebert.errors import PrunebertError
from prunebert.io import write_json
from prunebert.metrics import compute_metrics
from prunebert.models import load_model
from prunebert.stages.common import TrainConfig, environment, training_arguments

__all__ = ["EvaluateConfig", "TaskSpec", "evaluate_splits", "run_evaluate", "task_loss"]

Split = Literal["train", "dev", "test"]


class TaskSpec(StrictModel):
    """Which labelled data a stage reads and how it is tokenised."""

    task: str = Field(
        "rotten-tomatoes", description="built-in task, hub name (glue/sst2) or local csv/tsv/jsonl"
    )
    text_column: str = Field("text", description="column holding the (first) text")
    text_pair_column: str | None = Field(None, description="column holding the second text of a pair task")
    label_column: str = Field("label", description="column holding the label")
    max_seq_length: int = Field(128, ge=8, le=512, description="tokens per example (longer are truncated)")

    def load(self, seed: int, max_train_examples: int | None = None) -> TaskData:
        """The task this spec names, split with `seed` (train optionally subsampled)."""
        return load_task(
            self.task,
            text_column=self.text_column,
            text_pair_column=self.text_pair_column,
            label_column=self.label_column,
            seed=seed,
            max_train_examples=max_train_examples,
        )


class EvaluateConfig(TaskSpec):
    """Recipe of the `evaluate` stage."""

    model: str = Field(..., description="a fine-tuned model directory or prunebert run directory")
    splits: list[Split] = Field(["dev", "test"], description="splits to score")
    batch_size: int = Field(64, ge=1, description="examples per forward pass")
    seed: int = Field(0, description="seed of the task's split (must match the fine-tuning run)")
    output: Path | None = Field(None, description="write the results JSON here")


def evaluate_splits(
    trainer: Trainer, splits: Mapping[str, datasets.Dataset], task: TaskData, names: Iterable[str]
) -> dict[str, dict[str, float]]:
    """Predict each split with `trainer` and score it with the task's metric."""
    out = {}
    for name in names:
        prediction = trainer.predict(splits[name], metric_key_prefix=name)
        logits, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        out[name] = {**compute_metrics(task.metric, logits, labels), "loss": task_loss(logits, labels)}
    return out


def task_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy (MSE for a 1-logit regression) over all examples, from the gathered predictions.

    The Trainer's own eval loss averages per-process values and drifts under DDP; this is the same
    number in one process or many.
    """
    scores = torch.from_numpy(logits).float()  # (N, num_labels)
    if scores.shape[-1] == 1:
        return float(F.mse_loss(scores.squeeze(-1), torch.from_numpy(labels).float()))
    return float(F.cross_entropy(scores, torch.from_numpy(labels).long()))


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score a fine-tuned model; returns (and, with `output`, writes) the results JSON."""
    task = cfg.load(cfg.seed)
    loaded = load_model(cfg.model, head="classification", num_labels=task.num_labels)
    if loaded.new_head:
        raise PrunebertError(
            f"model {cfg.model!r} has no trained classification head; fine-tune it first "
            "(prunebert finetune) or pass a fine-tuned model directory"
        )
    splits = tokenize_task(task, loaded.tokenizer, cfg.max_seq_length)
    args = training_arguments(TrainConfig(batch_size=cfg.batch_size), Path("/tmp/prunebert-eval"), cfg.seed)
    trainer = Trainer(model=loaded.model, args=args, data_collator=DataCollatorWithPadding(loaded.tokenizer))
    results = {
        "stage": "evaluate",
        "recipe": cfg.model_dump(mode="json"),
        "task": {"name": task.name, "metric": task.metric, "num_labels": task.num_labels},
        "metrics": evaluate_splits(trainer, splits, task, cfg.splits),
        "environment": environment(),
    }
    if cfg.output is not None and is_main_process():
        write_json(cfg.output, results)
    return results
