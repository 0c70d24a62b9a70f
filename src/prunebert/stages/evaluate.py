"""`evaluate`: the metric a task calls for (accuracy, F1, MCC, Pearson/Spearman, SQuAD exact match and F1)
on chosen splits."""

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

from prunebert.data import TaskData
from prunebert.data.qa_features import best_answers
from prunebert.data.spec import QAConfig, TaskSpec
from prunebert.distributed import is_main_process
from prunebert.errors import PrunebertError
from prunebert.hardware import environment
from prunebert.io import write_json
from prunebert.metrics import compute_metrics, squad_scores
from prunebert.models import Head, load_model
from prunebert.stages.common import TrainConfig, training_arguments

__all__ = [
    "EvaluateConfig",
    "evaluate_splits",
    "head_for",
    "run_evaluate",
    "span_loss",
    "task_loss",
]

Split = Literal["train", "dev", "test"]


def head_for(task: TaskData) -> Head:
    """The model head a task trains: a span (start/end) head for QA, else a sequence classifier."""
    return "qa" if task.kind == "qa" else "classification"


class EvaluateConfig(TaskSpec):
    """Recipe of the `evaluate` stage."""

    model: str = Field(..., description="a fine-tuned model directory or prunebert run directory")
    splits: list[Split] = Field(["dev", "test"], description="splits to score")
    batch_size: int = Field(64, ge=1, description="examples per forward pass")
    seed: int = Field(0, description="seed of the task's split (must match the fine-tuning run)")
    output: Path | None = Field(None, description="write the results JSON here")


def evaluate_splits(
    trainer: Trainer,
    splits: Mapping[str, datasets.Dataset],
    task: TaskData,
    names: Iterable[str],
    qa: QAConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Predict each split with `trainer` and score it with the task's metric (`qa`: span choice)."""
    out = {}
    for name in names:
        prediction = trainer.predict(splits[name], metric_key_prefix=name)
        if task.kind == "qa":
            out[name] = _score_spans(prediction, splits[name], task.splits()[name], qa or QAConfig())
            continue
        logits, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        out[name] = {**compute_metrics(task.metric, logits, labels), "loss": task_loss(logits, labels)}
    return out


def _score_spans(
    prediction: Any, windows: datasets.Dataset, examples: datasets.Dataset, qa: QAConfig
) -> dict[str, float]:
    """Exact match and F1 of the best span per question, and the windows' span loss."""
    start, end = (np.asarray(p) for p in prediction.predictions)  # (windows, T) each
    texts = best_answers(start, end, windows, examples["context"], qa.n_best, qa.max_answer_length)
    first, last = (np.asarray(p) for p in prediction.label_ids)
    return {**squad_scores(texts, examples["answer_text"]), "loss": span_loss(start, end, first, last)}


def span_loss(start: np.ndarray, end: np.ndarray, first: np.ndarray, last: np.ndarray) -> float:
    """Mean over windows of the start and end cross-entropies, halved (as BERT's QA head's own loss)."""
    ce_start = F.cross_entropy(torch.from_numpy(start).float(), torch.from_numpy(first).long())
    ce_end = F.cross_entropy(torch.from_numpy(end).float(), torch.from_numpy(last).long())
    return float((ce_start + ce_end) / 2)


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
    head = head_for(task)
    loaded = load_model(
        cfg.model, head=head, num_labels=task.num_labels if head == "classification" else None
    )
    if loaded.new_head:
        what = "question-answering" if head == "qa" else "classification"
        raise PrunebertError(
            f"model {cfg.model!r} has no trained {what} head; fine-tune it first "
            "(prunebert finetune) or pass a fine-tuned model directory"
        )
    splits = cfg.features(task, loaded.tokenizer)
    args = training_arguments(TrainConfig(batch_size=cfg.batch_size), Path("/tmp/prunebert-eval"), cfg.seed)
    trainer = Trainer(model=loaded.model, args=args, data_collator=DataCollatorWithPadding(loaded.tokenizer))
    results = {
        "stage": "evaluate",
        "recipe": cfg.model_dump(mode="json"),
        "task": {"name": task.name, "kind": task.kind, "metric": task.metric, "num_labels": task.num_labels},
        "metrics": evaluate_splits(trainer, splits, task, cfg.splits, cfg.qa),
        "environment": environment(),
    }
    if cfg.output is not None and is_main_process():
        write_json(cfg.output, results)
    return results
