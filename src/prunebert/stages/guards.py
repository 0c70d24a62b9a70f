"""A run whose numbers stop being numbers stops: non-finite loss or weights end it with a one-line error.

`FiniteGuard` checks every logged loss and, at each checkpoint, the weights, before the checkpoint is marked
complete: a checkpoint of a diverged model is never taken for a good one, and the last good checkpoint
stays. `check_finite` is the final check before a model is saved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from prunebert.errors import PrunebertError

__all__ = ["FiniteGuard", "check_finite"]

_FIX = "lower --train.learning_rate (or check the data) and re-run with --overwrite"


def _first_bad(model: nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, if any."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return name
    return None


def check_finite(model: nn.Module, where: str) -> None:
    """A model with a non-finite weight is a one-line error, never saved as a result."""
    bad = _first_bad(model)
    if bad is not None:
        raise PrunebertError(f"training diverged: weight {bad} is not finite {where}; {_FIX}")


class FiniteGuard(TrainerCallback):
    """Stops training when a logged loss or, at a checkpoint, a weight is NaN or infinite.

    Add it before `CompleteCheckpoints`, so a diverged checkpoint is never marked complete.
    """

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """A non-finite loss (per logging window, or the run's mean) ends the run."""
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value):
                raise PrunebertError(
                    f"training diverged: the loss became {value} by step {state.global_step}; {_FIX} "
                    f"(the last good checkpoint is kept in {Path(args.output_dir or '.')})"
                )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """The checkpoint just written must hold finite weights, else it stays incomplete."""
        model = kwargs.get("model")
        if model is not None:
            check_finite(model, f"at step {state.global_step} (that checkpoint is discarded)")
