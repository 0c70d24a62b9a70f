"""What every stage shares: the training section of a recipe, TrainingArguments, run directories, results."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from pydantic import Field, field_validator
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from prunebert.callback import PruningCallback, log_pruning_first, trackers
from prunebert.config import PruningConfig
from prunebert.distributed import gather_strings, is_main_process, mask_digest
from prunebert.errors import PrunebertError
from prunebert.hardware import environment, native_bf16
from prunebert.io import atomic_path, lock_dir, read_yaml, unlock_dir, write_json
from prunebert.model_card import write_model_record
from prunebert.models import save_pruned
from prunebert.pruner import Pruner, schedule_of
from prunebert.recipes import StrictModel
from prunebert.stages.checkpoints import last_complete, remove_incomplete
from prunebert.stages.guards import check_finite

__all__ = [
    "RESULTS_FILE",
    "RunDir",
    "TrainConfig",
    "check_schedule",
    "mean_loss_per_batch",
    "pruning_callbacks",
    "resolve_precision",
    "sparsity_report",
    "tracked",
    "training_arguments",
]

RESULTS_FILE = "results.json"
RECIPE_FILE = "recipe.yaml"
START_FILE = "start.json"  # what a stage measured before training, kept for a resumed run
Tracker = Literal["tensorboard", "wandb", "mlflow", "none"]
_NO_TRACKER: list[Tracker] = ["none"]


class TrainConfig(StrictModel):
    """The optimisation section of a recipe (AdamW with linear decay, as the seed papers use)."""

    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1 means run `epochs` epochs")
    epochs: float = Field(1.0, gt=0, description="passes over the training data when max_steps is -1")
    batch_size: int = Field(32, ge=1, description="examples per device per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(5e-5, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of steps of linear LR warm-up")
    lr_schedule: Literal["linear", "rewind"] = Field(
        "linear",
        description="linear: warm-up, then decay to 0; rewind: back to the peak at every mask update, "
        "decaying to lr_floor by the next and to 0 after the last (oBERT / GMP* recipes)",
    )
    lr_floor: float = Field(0.1, ge=0, le=1, description="rewind: end-of-cycle LR as a fraction of the peak")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 = off)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="mixed precision; auto: bf16 autocast where the hardware computes bf16 natively (CPU: "
        "AVX-512 BF16 / AMX; GPU: bf16 support), else fp32. Master weights stay fp32",
    )
    group_by_length: bool = Field(
        True,
        description="batch examples of similar length together (less padding: faster)",
    )
    logging_steps: int = Field(20, ge=1, description="log loss and sparsity every N steps")
    save_steps: int = Field(200, ge=1, description="write a resumable checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="keep at most N complete checkpoints")
    report_to: list[Tracker] = Field(
        default_factory=lambda: _NO_TRACKER.copy(),
        description="experiment trackers that get the logged loss, learning rate, sparsity and the method's "
        "metrics; tensorboard writes OUTPUT_DIR/tensorboard/",
    )

    recorded_if_set: ClassVar[tuple[str, ...]] = ("lr_schedule", "lr_floor", "report_to")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        """`--train.report_to tensorboard` is a list of one."""
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _none_alone(cls, value: list[str]) -> list[str]:
        if "none" in value and len(value) > 1:
            raise ValueError("'none' means no tracker; list trackers without it")
        return value

    def planned_steps(self, examples: int) -> int:
        """Optimizer steps of a one-process run over `examples` training examples (as the Trainer counts)."""
        if self.max_steps > 0:
            return self.max_steps
        batches = math.ceil(examples / self.batch_size)
        per_epoch = max(math.ceil(batches / self.gradient_accumulation_steps), 1)
        return math.ceil(self.epochs * per_epoch)


def resolve_precision(precision: str) -> str:
    """The precision a run trains in: `auto` becomes bf16 where it is native, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_bf16() else "fp32"


def pruning_callbacks(pruner: Pruner | None, cfg: TrainConfig) -> list[TrainerCallback]:
    """The `PruningCallback` of a pruning run (with LR rewinding if the recipe asks), none without one."""
    if pruner is None:
        return []
    return [PruningCallback(pruner, cfg.lr_floor if cfg.lr_schedule == "rewind" else None)]


def check_schedule(pruning: PruningConfig | None, train: TrainConfig, examples: int) -> None:
    """Before the run directory is written: the pruning schedule must reach its target in the run's steps."""
    if pruning is not None and pruning.schedule != "fixed":
        schedule_of(pruning, train.planned_steps(examples))


def training_arguments(cfg: TrainConfig, output_dir: Path, seed: int) -> TrainingArguments:
    """TrainingArguments for a stage; checkpoints go to `output_dir`, rotated by `CompleteCheckpoints`."""
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
        bf16=resolve_precision(cfg.precision) == "bf16",
        fp16=cfg.precision == "fp16",
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must show, so FiniteGuard stops the run
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,  # CompleteCheckpoints rotates, once the new checkpoint is complete
        eval_strategy="no",
        report_to=trackers(cfg.report_to),
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


def tracked(trainer: Trainer) -> Trainer:
    """Let the trackers of `--train.report_to` log the sparsity and method metrics (the pruning callback
    runs first); TensorBoard writes into the run directory's `tensorboard/` (a stage's checkpoints sit in
    `OUTPUT_DIR/checkpoints`)."""
    out = Path(trainer.args.output_dir or ".")
    return log_pruning_first(trainer, (out.parent if out.name == "checkpoints" else out) / "tensorboard")


class RunDir:
    """A stage's output directory: recipe, Trainer checkpoints, final model, results.

    Layout: `recipe.yaml`, `checkpoints/checkpoint-N/`, `model/` (baked, loadable by transformers),
    `results.json` (written last: its presence means the run finished). `prepare` only checks, so a bad
    input found while loading the model or data leaves the directory as it was; `create` writes.
    In a multi-process run only the main process writes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.model = root / "model"
        self.results = root / RESULTS_FILE
        self._recipe: dict[str, Any] | None = None
        self._overwrite = False

    def prepare(self, recipe: dict[str, Any], overwrite: bool = False) -> Path | None:
        """Check this run may use the directory (nothing is written); the checkpoint to resume from."""
        if self.results.is_file() and not overwrite:
            raise PrunebertError(
                f"{self.root} already holds a finished run; pass a new --output_dir or --overwrite"
            )
        saved = self.root / RECIPE_FILE
        if saved.is_file() and not overwrite and _saved_recipe(saved) != recipe:
            raise PrunebertError(
                f"{self.root} holds an unfinished run of a different recipe; "
                "pass a new --output_dir or --overwrite"
            )
        if self.root.is_dir() and not saved.is_file() and not overwrite and _visible_entries(self.root):
            raise PrunebertError(
                f"{self.root} is not empty and was not written by prunebert; pass a new --output_dir"
            )
        _check_writable(self.root)
        if is_main_process():
            lock_dir(self.root)  # until this command ends: a second command on it is refused
        self._recipe, self._overwrite = recipe, overwrite
        return None if overwrite else last_complete(self.checkpoints)

    def create(self) -> None:
        """Write the recipe once the inputs are known to be good; `--overwrite` drops the old run first."""
        if self._recipe is None:
            raise RuntimeError("RunDir.prepare must be called before create")
        if not is_main_process():
            return
        try:
            if self._overwrite:  # results first: a crash midway must not leave a "finished" run
                self.results.unlink(missing_ok=True)
                for old in (self.checkpoints, self.model):
                    shutil.rmtree(old, ignore_errors=True)
            remove_incomplete(self.checkpoints)
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.root / RECIPE_FILE) as tmp:
                tmp.write_text(yaml.safe_dump(self._recipe, sort_keys=False))
        except OSError as exc:
            raise PrunebertError(
                f"cannot write to {self.root} ({exc.strerror}); pass a writable --output_dir"
            ) from None

    def first_attempt(self, resume: Path | None, facts: dict[str, Any]) -> dict[str, Any]:
        """`facts` measured before training (a fresh start saves them), or those a resumed run saved."""
        path = self.root / START_FILE
        if resume is None:
            if is_main_process():
                write_json(path, facts)
            return facts
        try:
            saved: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return facts
        return saved

    def last_checkpoint(self) -> Path | None:
        """The newest complete Trainer checkpoint, if any."""
        return last_complete(self.checkpoints)

    def save_model(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pruner: Pruner | None
    ) -> None:
        """Bake the masks and save the final model into `model/` (main process only)."""
        if pruner is not None:
            pruner.bake()
        check_finite(model, "at the end of training (no model saved)")
        if is_main_process():
            save_pruned(model, tokenizer, pruner, self.model)

    def write_results(self, results: dict[str, Any]) -> None:
        """Write results.json (atomically, main process only), with the versions that produced it."""
        results = {**results, "environment": environment()}
        if is_main_process():
            if (self.model / "config.json").is_file():  # the model travels with its record and card
                write_model_record(self.model, results, self.root / RECIPE_FILE)
            write_json(self.results, results)
            unlock_dir(self.root)


def _saved_recipe(path: Path) -> Any:
    """The recipe an unfinished run recorded; a damaged one is a one-line error."""
    fix = "pass a new --output_dir, or --overwrite to start the run again"
    return read_yaml(path, "the recorded recipe", fix)


def _visible_entries(directory: Path) -> bool:
    """Whether `directory` holds anything but dot-files (another rank's half-written temp file)."""
    return any(not p.name.startswith(".") for p in directory.iterdir())


def _check_writable(root: Path) -> None:
    """Fail before any work if `root` cannot be created or written (read-only, a file in the way)."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PrunebertError(f"{existing} is a file, not a directory; pass another --output_dir")
    try:
        with tempfile.TemporaryFile(dir=existing):  # a probe that leaves nothing behind
            pass
    except OSError as exc:
        raise PrunebertError(
            f"cannot write to {existing} ({exc.strerror}); pass a writable --output_dir"
        ) from None


def sparsity_report(pruner: Pruner | None) -> dict[str, Any]:
    """Overall and per-module sparsity of the pruned targets (empty for a dense run).

    `mask_sha256` holds one digest of the final masks per process (all equal: masks are decided once);
    every rank must call this, it gathers.
    """
    if pruner is None:
        return {"overall": 0.0, "modules": {}, "history": []}
    return {
        "overall": pruner.overall_sparsity(),
        # the recipe's sparsity; `target_exact` false: the method's own threshold set the final masks
        # (soft movement), and `overall` is what it gave
        "target": pruner.config.sparsity,
        "target_exact": pruner.method.exact_sparsity,
        "modules": pruner.module_sparsity(),
        "history": [{"step": s, "sparsity": v} for s, v in pruner.history],
        "method": pruner.config.method,
        "mask_sha256": gather_strings(mask_digest(pruner.masks)),
    }
