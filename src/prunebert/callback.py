"""The one place that knows the HF Trainer's events: it drives a `Pruner` from inside `Trainer.train()`.

Usable in any user's own Trainer:

    pruner = Pruner(model, PruningConfig(sparsity=0.9, method="magnitude"))
    trainer = Trainer(model=model, args=args, ..., callbacks=[PruningCallback(pruner)])
    trainer.train()
    pruner.bake(); trainer.save_model(out); pruner.save(Path(out), with_method_state=False)

Checkpoints written by the Trainer get the pruner's masks and method state beside them, and
`trainer.train(resume_from_checkpoint=...)` restores them before the first resumed step.

Experiment trackers (`report_to=["tensorboard"]`, wandb, mlflow) get the sparsity and the method's metrics
only if this callback runs before theirs: the Trainer puts its trackers first, so call
`log_pruning_first(trainer)` after building it (the stages do).

A method that asks for gradient samples at each mask update (`obs`) gets a sampler over the Trainer's
training data (its dataset and collator, through a loader of the sampler's own), unless the pruner
already has one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations.integration_utils import TensorBoardCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE
from prunebert.pruner import Pruner
from prunebert.sampling import GradientSampler
from prunebert.schedules import RewindLR, mask_update_steps

__all__ = ["PruningCallback", "log_pruning_first", "trackers"]

#: experiment tracker (a `report_to` name) -> the module it needs and the package that installs it
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def _checkpoint_dir(args: TrainingArguments, state: TrainerState) -> Path:
    """Where the Trainer writes (or wrote) the checkpoint of the current step."""
    return Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


class PruningCallback(TrainerCallback):
    """Prunes on the Trainer's schedule and keeps pruned weights at exactly zero."""

    def __init__(self, pruner: Pruner, lr_rewind_floor: float | None = None) -> None:
        """`lr_rewind_floor`: rewind the learning rate to its peak at every mask update, decaying to this
        fraction of it by the next one (`RewindLR`); None keeps the Trainer's own schedule."""
        self.pruner = pruner
        self.lr_rewind_floor = lr_rewind_floor

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Restore a resumed checkpoint's masks, build the schedule, prune what step 0 asks for."""
        checkpoint = _checkpoint_dir(args, state)
        if state.global_step > 0:  # resuming: continuing with fresh masks would silently lose them
            if not (checkpoint / MASKS_FILE).is_file():
                raise PrunebertError(
                    f"resuming at step {state.global_step} but {checkpoint} has no {MASKS_FILE} (written "
                    "without PruningCallback, or interrupted while saving); resume from an earlier checkpoint"
                )
            self.pruner.load(checkpoint)
        loader = kwargs.get("train_dataloader")
        wants_samples = self.pruner.method.gradient_request() is not None
        if wants_samples and self.pruner.gradient_sampler is None and loader is not None:
            self.pruner.gradient_sampler = GradientSampler.from_dataloader(loader)
        self.pruner.start(state.max_steps)
        if self.lr_rewind_floor is not None:
            self._rewind_lr(args, state, kwargs.get("lr_scheduler"), kwargs.get("optimizer"))
        self.pruner.update(state.global_step, kwargs.get("optimizer"))
        self.pruner.enforce()

    def _rewind_lr(
        self, args: TrainingArguments, state: TrainerState, scheduler: Any, optimizer: Any
    ) -> None:
        """Replace the Trainer's LR factor by `RewindLR` over this run's mask-update steps (a pure function
        of the step, so a resumed run continues on the same curve)."""
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate may wrap the scheduler
        if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR) or optimizer is None:
            raise PrunebertError(
                "learning-rate rewinding needs the Trainer's own LambdaLR schedule and optimizer; "
                "do not pass `optimizers=` to the Trainer, or drop lr rewinding"
            )
        assert self.lr_rewind_floor is not None
        rewind = RewindLR(
            restarts=tuple(mask_update_steps(self.pruner.schedule, state.max_steps)),
            total=state.max_steps,
            warmup=args.get_warmup_steps(state.max_steps),
            floor=self.lr_rewind_floor,
        )
        inner.lr_lambdas = [lambda step: rewind.factor(step) for _ in inner.lr_lambdas]
        for group, base in zip(optimizer.param_groups, inner.base_lrs, strict=True):
            group["lr"] = base * rewind.factor(inner.last_epoch)
        inner._last_lr = [group["lr"] for group in optimizer.param_groups]

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Gradients of this step are complete (and clipped): let the method read them; for movement
        pruning the pruner then masks them (the hooks left the pruned entries' gradients for it)."""
        self.pruner.after_backward()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Post-step method work (e.g. proximal operator) with this step's learning rate; re-zero."""
        scheduler = kwargs.get("lr_scheduler")
        lr = float(scheduler.get_last_lr()[0]) if scheduler is not None else args.learning_rate
        self.pruner.after_optimizer_step(kwargs.get("optimizer"), lr)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Update masks if the schedule moved at this step."""
        self.pruner.update(state.global_step, kwargs.get("optimizer"))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Store masks and method state inside the checkpoint the Trainer just wrote."""
        checkpoint = _checkpoint_dir(args, state)
        if checkpoint.is_dir() and args.process_index == 0:
            self.pruner.save(checkpoint)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Report the current sparsity next to the loss, on screen and in `state.log_history`."""
        if logs is not None and "loss" in logs:
            extra = {"sparsity": round(self.pruner.overall_sparsity(), 4), **self.pruner.method.log_metrics()}
            logs.update(extra)
            if state.log_history and "loss" in state.log_history[-1]:
                state.log_history[-1].update(extra)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Leave the model with exact zeros in every pruned weight."""
        self.pruner.enforce()


def trackers(names: Sequence[str]) -> list[str]:
    """The `report_to` list for TrainingArguments ("none" dropped); a tracker whose package is missing is a
    one-line error naming the install command."""
    chosen = [n for n in names if n != "none"]
    for name in chosen:
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise PrunebertError(
                f"--train.report_to {name} needs the {package} package: pip install {package} "
                "(or drop it from report_to)"
            )
    return chosen


def log_pruning_first(trainer: Trainer, tensorboard_dir: Path | None = None) -> Trainer:
    """Run every `PruningCallback` before the Trainer's own callbacks, so the trackers it put first log
    the sparsity and method metrics that `on_log` adds; TensorBoard writes into `tensorboard_dir` if given."""
    callbacks = trainer.callback_handler.callbacks
    callbacks.sort(key=lambda c: not isinstance(c, PruningCallback))  # stable: the rest keep their order
    for callback in callbacks:
        if (
            tensorboard_dir is not None
            and isinstance(callback, TensorBoardCallback)
            and not callback.logging_dir
        ):
            callback.logging_dir = str(tensorboard_dir)
    return trainer
