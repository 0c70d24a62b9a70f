"""The common cases in one line each: prune a model now (`prune`), or while a Trainer trains it
(`prune_while_training`).

    pruner = prunebert.prune(model, method="magnitude", sparsity=0.9)       # zeros in the weights, now
    pruner = prunebert.prune_while_training(trainer, sparsity=0.9)         # gradually, in trainer.train()

Keyword options are `PruningConfig` fields by name (`scope="global"`, `roles=[...]`, `schedule=...`);
any other keyword is an option of the method (`num_grads=64` for `obs`; `prunebert methods NAME` lists
them). Both return the `Pruner`, which holds the masks: `pruner.save(directory)` writes them beside a saved
model for later prunebert stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers import Trainer

from prunebert.callback import PruningCallback, log_pruning_first
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.pruner import Pruner, prune_oneshot
from prunebert.recipes import validate_recipe
from prunebert.sampling import Batch, GradientSampler

__all__ = ["prune", "prune_while_training", "pruning_config"]


def pruning_config(method: str, sparsity: float, **pruning_options: Any) -> PruningConfig:
    """A validated `PruningConfig`: `PruningConfig` fields by name, every other keyword a method option."""
    fields = {k: v for k, v in pruning_options.items() if k in PruningConfig.model_fields}
    options = {k: v for k, v in pruning_options.items() if k not in PruningConfig.model_fields}
    recipe = {**fields, "method": method, "sparsity": sparsity}
    if options:
        recipe["options"] = {**fields.get("options", {}), **options}
    return validate_recipe(PruningConfig, recipe)


def prune(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float = 0.9,
    *,
    calibration: Sequence[Batch] | GradientSampler | None = None,
    steps: int = 1,
    bake: bool = True,
    **pruning_options: Any,
) -> Pruner:
    """Prune `model` to `sparsity` now, without training (one shot, in `steps` increments), in place.

    Baked by default: the zeros are in the weights and the model is a plain transformers model again
    (`save_pretrained` it, run it, export it). `bake=False` leaves the method's modules in place (e.g.
    learned gates) for a `pruner.bake()` later. Methods that score with gradients (`obs`) need
    `calibration`: a few labelled batches (dicts of tensors with `labels`) or a `GradientSampler`.
    To fine-tune afterwards with the mask kept, give the pruner to `PruningCallback(pruner)`: its schedule
    is `fixed`.
    """
    config = pruning_config(method, sparsity, **{"schedule": "fixed", **pruning_options})
    pruner = prune_oneshot(model, config, calibration, steps)
    if bake:
        pruner.bake()
    return pruner


def prune_while_training(
    trainer: Trainer, method: str = "magnitude", sparsity: float = 0.9, **pruning_options: Any
) -> Pruner:
    """Prune `trainer.model` toward `sparsity` during `trainer.train()` (default: the cubic schedule of
    gradual magnitude pruning, Zhu & Gupta 2017); `pruner.bake()` after training writes the zeros for good.

    Adds a `PruningCallback` that runs before the Trainer's own callbacks, so the trackers of `report_to`
    log the sparsity. `lr_rewind_floor=0.1` rewinds the learning rate at every mask update.
    """
    if trainer.model is None:
        raise PrunebertError("the trainer has no model (built with model_init?): pass the model to Trainer")
    floor = pruning_options.pop("lr_rewind_floor", None)
    pruner = Pruner(trainer.model, pruning_config(method, sparsity, **pruning_options))
    trainer.add_callback(PruningCallback(pruner, floor))
    log_pruning_first(trainer)
    return pruner
