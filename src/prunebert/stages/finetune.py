"""`finetune`: task training with a transferred mask kept fixed, or with pruning during fine-tuning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field
from transformers import DataCollatorWithPadding, Trainer

from prunebert.callback import PruningCallback
from prunebert.config import PruningConfig
from prunebert.data import load_task, tokenize_task
from prunebert.models import load_model, save_pruned, transfer_pruner
from prunebert.stages.common import RunDir, TrainConfig, sparsity_report, training_arguments
from prunebert.stages.evaluate import TaskSpec, evaluate_splits

__all__ = ["FinetuneConfig", "run_finetune"]


class FinetuneConfig(TaskSpec):
    """Recipe of the `finetune` stage."""

    model: str = Field("minilm-l6", description="built-in, hub or local model, or a prunebert run directory")
    output_dir: Path = Field(Path("runs/finetune"), description="where checkpoints, model and results go")
    seed: int = Field(0, description="seed of data order and head initialisation")
    max_train_examples: int | None = Field(None, ge=1, description="seeded subsample of the training split")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, learning_rate=5e-5))
    pruning: PruningConfig | None = Field(
        None, description="omit to keep the checkpoint's masks fixed (transfer) or to train dense"
    )


def run_finetune(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the stage; returns (and writes) the results JSON."""
    run = RunDir(cfg.output_dir)
    resume = run.prepare(cfg.model_dump(mode="json"), overwrite)
    task = load_task(
        cfg.task,
        text_column=cfg.text_column,
        text_pair_column=cfg.text_pair_column,
        label_column=cfg.label_column,
        seed=cfg.seed,
        max_train_examples=cfg.max_train_examples,
    )
    loaded = load_model(cfg.model, head="classification", num_labels=task.num_labels)
    model, tokenizer = loaded.model, loaded.tokenizer
    if task.label_names is not None:
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    splits = tokenize_task(task, tokenizer, cfg.max_seq_length)
    pruner = transfer_pruner(model, loaded.path, cfg.pruning)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg.train, run.checkpoints, cfg.seed),
        train_dataset=splits["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[PruningCallback(pruner)] if pruner is not None else [],
    )
    start = time.time()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.time() - start
    metrics = evaluate_splits(trainer, splits, task, ("dev", "test"))
    save_pruned(model, tokenizer, pruner, run.model)
    results = {
        "stage": "finetune",
        "recipe": cfg.model_dump(mode="json"),
        "task": {
            "name": task.name,
            "metric": task.metric,
            "num_labels": task.num_labels,
            "sizes": {k: len(v) for k, v in splits.items()},
        },
        "metrics": metrics,
        "sparsity": sparsity_report(pruner),
        "transferred_mask": pruner is not None and cfg.pruning is None,
        "train": {
            "steps": trainer.state.global_step,
            "runtime_s": runtime,
            "train_loss": output.training_loss,
            "log_history": trainer.state.log_history,
        },
        "model_dir": str(run.model),
    }
    run.write_results(results)
    return results
