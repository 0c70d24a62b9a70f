"""What every stage shares: the training section of a recipe, TrainingArguments, run directories, results."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field
from transformers import Trainer, TrainingArguments

from prunebert.config import StrictModel
from prunebert.errors import PrunebertError
from prunebert.io import write_json
from prunebert.pruner import Pruner

__all__ = [
    "RESULTS_FILE",
    "RunDir",
    "TrainConfig",
    "mean_loss_per_batch",
    "sparsity_report",
    "training_arguments",
]

RESULTS_FILE = "results.json"
RECIPE_FILE = "recipe.yaml"


class TrainConfig(StrictModel):
    """The optimisation section of a recipe (AdamW with linear decay, as the seed papers use)."""

    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1 means run `epochs` epochs")
    epochs: float = Field(1.0, gt=0, description="passes over the training data when max_steps is -1")
    batch_size: int = Field(32, ge=1, description="examples per device per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(5e-5, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of steps of linear LR warm-up")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 = off)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="mixed precision mode")
    group_by_length: bool = Field(
        True,
        description="batch examples of similar length together (less padding: faster)",
    )
    logging_steps: int = Field(20, ge=1, description="log loss and sparsity every N steps")
    save_steps: int = Field(200, ge=1, description="write a resumable checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="keep at most N checkpoints")


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int) -> TrainingArguments:
    """TrainingArguments for a stage; checkpoints go to `output_dir`."""
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 64),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def mean_loss_per_batch(trainer: Trainer) -> Trainer:
    """Tell the Trainer our models return per-batch mean losses (BERT heads use plain CrossEntropyLoss).

    transformers v5 infers from `forward(**kwargs)` that the model divides by `num_items_in_batch` itself
    and then skips the division by `gradient_accumulation_steps`: the loss and gradients come out
    `gradient_accumulation_steps` times too large. This restores the division.
    """
    trainer.model_accepts_loss_kwargs = False
    return trainer


class RunDir:
    """A stage's output directory: recipe, Trainer checkpoints, final model, results.

    Layout: `recipe.yaml`, `checkpoints/checkpoint-N/`, `model/` (baked, loadable by transformers),
    `results.json` (written last: its presence means the run finished).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.model = root / "model"
        self.results = root / RESULTS_FILE

    def prepare(self, recipe: dict[str, Any], overwrite: bool = False) -> Path | None:
        """Create the directory; return the checkpoint to resume from, if the same recipe was interrupted."""
        if self.results.is_file() and not overwrite:
            raise PrunebertError(
                f"{self.root} already holds a finished run; pass a new --output_dir or --overwrite"
            )
        saved = self.root / RECIPE_FILE
        if saved.is_file() and not overwrite and yaml.safe_load(saved.read_text()) != recipe:
            raise PrunebertError(
                f"{self.root} holds an unfinished run of a different recipe; "
                "pass a new --output_dir or --overwrite"
            )
        if self.root.exists() and not saved.is_file() and any(self.root.iterdir()) and not overwrite:
            raise PrunebertError(
                f"{self.root} is not empty and was not written by prunebert; pass a new --output_dir"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
        except OSError as exc:
            raise PrunebertError(
                f"cannot write to {self.root} ({exc.strerror}); pass a writable --output_dir"
            ) from None
        return None if overwrite else self.last_checkpoint()

    def last_checkpoint(self) -> Path | None:
        """The newest complete Trainer checkpoint, if any."""
        done = [p for p in self.checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)

    def write_results(self, results: dict[str, Any]) -> None:
        """Write results.json (atomically), with the software versions that produced it."""
        results = {**results, "environment": environment()}
        write_json(self.results, results)


def environment() -> dict[str, str]:
    """Versions and machine facts that make a result reproducible."""
    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("prunebert", "torch", "transformers")}
    return {
        **versions,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": str(torch.get_num_threads()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def sparsity_report(pruner: Pruner | None) -> dict[str, Any]:
    """Overall and per-module sparsity of the pruned targets (empty for a dense run)."""
    if pruner is None:
        return {"overall": 0.0, "modules": {}, "history": []}
    return {
        "overall": pruner.overall_sparsity(),
        "modules": pruner.module_sparsity(),
        "history": [{"step": s, "sparsity": v} for s, v in pruner.history],
        "method": pruner.config.method,
    }
