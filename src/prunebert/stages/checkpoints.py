"""Crash-safe Trainer checkpoints, and runs that resume exactly where they stopped.

A checkpoint counts only once every file of it is on disk.

The Trainer writes `checkpoint-N/` file by file (weights, optimizer, RNG, `trainer_state.json`), then
`PruningCallback` adds masks and method state. A process killed in between leaves a directory that looks
like a checkpoint but is not one. `CompleteCheckpoints`, the last callback of a stage, fsyncs those files
and then writes `prunebert_complete.json` atomically: resuming picks the newest checkpoint with that
marker and deletes newer incomplete ones. Old checkpoints are rotated only after the new one is
complete, so the last good checkpoint survives an interrupted write.

`SeededDataOrder` makes the length-grouped data order a function of (seed, epoch), as the Trainer's
random sampler already is, so a resumed run (and every DDP rank) reads the batches it would have.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from prunebert.distributed import barrier
from prunebert.io import write_json
from prunebert.stages.guards import FiniteGuard

__all__ = [
    "COMPLETE_FILE",
    "CompleteCheckpoints",
    "SeededDataOrder",
    "is_complete",
    "last_complete",
    "remove_incomplete",
    "resume_callbacks",
    "train_resumed",
]

COMPLETE_FILE = "prunebert_complete.json"


def _step(path: Path) -> int:
    suffix = path.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _checkpoints(directory: Path) -> list[Path]:
    """`checkpoint-N` directories, oldest step first."""
    found = [p for p in directory.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and _step(p) >= 0]
    return sorted(found, key=_step)


def is_complete(checkpoint: Path) -> bool:
    """Whether the marker names every file it was written after, and each is still there."""
    try:
        marker = json.loads((checkpoint / COMPLETE_FILE).read_text())
        files: dict[str, int] = marker["files"]
        return all((checkpoint / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def last_complete(directory: Path) -> Path | None:
    """The newest complete checkpoint under `directory`, if any."""
    done = [p for p in _checkpoints(directory) if is_complete(p)]
    return done[-1] if done else None


def remove_incomplete(directory: Path) -> None:
    """Delete checkpoint directories without a valid marker (left by a crash mid-write)."""
    for path in _checkpoints(directory):
        if not is_complete(path):
            shutil.rmtree(path, ignore_errors=True)


def _fsync_files(directory: Path) -> dict[str, int]:
    """fsync every file of a checkpoint; returns name -> size, what the marker records."""
    sizes = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name != COMPLETE_FILE):
        with path.open("rb") as f:
            os.fsync(f.fileno())
        sizes[path.name] = path.stat().st_size
    return sizes


class CompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint complete once written, then keeps only the newest `keep` complete ones.

    Add it after every other callback that writes into checkpoints (callbacks run in list order).
    Set `save_total_limit=None` in the TrainingArguments: the Trainer's own rotation runs before
    the checkpoint is complete.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Every rank has written its part (RNG state): mark the checkpoint, then rotate."""
        barrier()
        if not args.should_save:
            return
        root = Path(args.output_dir or ".")
        checkpoint = root / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not checkpoint.is_dir():
            return
        write_json(checkpoint / COMPLETE_FILE, {"step": state.global_step, "files": _fsync_files(checkpoint)})
        done = [p for p in _checkpoints(root) if is_complete(p)]
        for old in done[: max(0, len(done) - self.keep)]:
            (old / COMPLETE_FILE).unlink()  # first, so a half-deleted checkpoint is never taken as complete
            shutil.rmtree(old, ignore_errors=True)


class SeededDataOrder(TrainerCallback):
    """Seeds a length-grouped sampler per epoch; it draws from the global RNG, which a resumed run has not
    yet restored when the sampler is read, and which DDP ranks need not share."""

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Give this epoch's sampler the generator seed + epoch, before the data loader is read."""
        batches = getattr(kwargs.get("train_dataloader"), "batch_sampler", None)
        sampler = getattr(getattr(batches, "batch_sampler", batches), "sampler", None)  # under DDP's shard
        if isinstance(sampler, LengthGroupedSampler):
            epoch = int(state.epoch + 1e-6) if state.epoch else 0
            seed = args.data_seed if args.data_seed is not None else args.seed
            sampler.generator = torch.Generator().manual_seed(seed + epoch)


class _FinishedError(Exception):
    """Raised at the start of a run resumed from its final checkpoint: there is nothing left to train."""


class StopWhenFinished(TrainerCallback):
    """A run resumed from the checkpoint of its last step stops before training: the Trainer would
    otherwise take one step more than `max_steps` (it checks only after a step). Add it after the
    callbacks that restore state (masks) in `on_train_begin`."""

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Every step is done: stop here, with the checkpoint's weights, masks and state loaded."""
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise _FinishedError


def train_resumed(trainer: Trainer, resume: Path | None) -> TrainOutput:
    """`trainer.train`, resumed from `resume` if given; a run whose last step is already done trains
    nothing more (`training_loss` is then None: no step was taken)."""
    try:
        return trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except _FinishedError:
        return TrainOutput(trainer.state.global_step, None, {})  # type: ignore[arg-type]


def resume_callbacks(keep: int) -> list[TrainerCallback]:
    """What a stage adds last to its Trainer: seeded data order, the stop of a run resumed after its
    last step, the check that loss and weights stay finite, then checkpoint completion (`keep` kept)."""
    return [SeededDataOrder(), StopWhenFinished(), FiniteGuard(), CompleteCheckpoints(keep)]
