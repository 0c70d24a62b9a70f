"""The interface every pruning method implements; the pruner and the callback know nothing else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

import torch
from pydantic import BeforeValidator, ConfigDict, ValidationError
from pydantic_core import ErrorDetails
from torch import nn

from prunebert.errors import PrunebertError
from prunebert.recipes import StrictModel

if TYPE_CHECKING:
    from prunebert.schedules import Schedule
    from prunebert.targets import Target

__all__ = [
    "Count",
    "GradientRequest",
    "MethodOptions",
    "Number",
    "PruneSettings",
    "PruningMethod",
    "parse_options",
]


class PruneSettings(Protocol):
    """What a method may read of the pruning settings (`prunebert.config.PruningConfig` has these)."""

    @property
    def sparsity(self) -> float:
        """Final fraction of target weights set to zero."""

    @property
    def scope(self) -> str:
        """`layer` (each matrix alike) or `global` (one ranking over all targets)."""

    @property
    def schedule(self) -> str:
        """`oneshot`, `cubic`, `iterative` or `fixed`."""


def _not_a_flag(value: Any) -> Any:
    """YAML's true/false are not numbers here (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


#: a finite float option; strings such as YAML's `1e-3` (read as text, no dot) are parsed, booleans refused
Number = Annotated[float, BeforeValidator(_not_a_flag)]
#: a whole-number option; `1.5` and booleans are refused
Count = Annotated[int, BeforeValidator(_not_a_flag)]


class MethodOptions(StrictModel):
    """Method-specific options: a strict, frozen pydantic model, one `Field(description=...)` per option;
    bounds as `ge`/`gt`/`lt`, rules between options as validators."""

    model_config = ConfigDict(frozen=True)


#: pydantic's error types worded as a recipe's reader would say them
_WORDING = {
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "list_type": "must be a list",
}


def _problem(error: ErrorDetails) -> str:
    """One pydantic error as `<option> must be ..., got <value>` (`<option>` absent for cross-field rules)."""
    name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])[1:]
    kind = error["type"]
    if kind == "literal_error":
        message = f"must be one of {error.get('ctx', {}).get('expected', '')}"
    else:
        default = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)
        message = _WORDING.get(kind, default)
    return f"{name} {message}, got {error['input']!r}" if name else message


def parse_options(cls: type[MethodOptions], method: str, options: Mapping[str, Any]) -> MethodOptions:
    """Build `cls` from a recipe's `options` mapping; unknown keys and bad values are one-line errors."""
    known = set(cls.model_fields)
    unknown = sorted(set(options) - known)
    if unknown:
        raise PrunebertError(
            f"unknown option(s) {unknown} for method {method!r}; known options: {sorted(known) or 'none'}"
        )
    try:
        return cls.model_validate(dict(options))
    except ValidationError as exc:
        raise PrunebertError(f"bad option for method {method!r}: {_problem(exc.errors()[0])}") from None


@dataclass(frozen=True)
class GradientRequest:
    """What a second-order method asks for before each mask update: `count` mini-batch gradients of
    `batch_size` examples, drawn by the pruner's `gradient_sampler` away from the training run."""

    count: int
    batch_size: int


class PruningMethod:
    """Scores weights by importance (higher = keep) and may keep training-time state.

    Hooks run at the Trainer's events; the defaults do nothing, so a pure scoring method such as
    magnitude only implements `scores`.
    """

    name: ClassVar[str] = ""
    #: the paper (or papers) the method follows, as `Authors year, arXiv:id`; "" for plain baselines
    paper: ClassVar[str] = ""
    options_cls: ClassVar[type[MethodOptions]] = MethodOptions
    #: pruned weights never come back (their score is forced to -inf before ranking)
    monotone: ClassVar[bool] = True
    #: PruningConfig values this method uses when a recipe does not set them (e.g. its schedule)
    defaults: ClassVar[dict[str, Any]] = {}
    #: masks come in whole groups (heads, neurons): `select` also picks the final masks, because the
    #: pruner's per-weight top-k could split a group at the boundary
    structured: ClassVar[bool] = False
    #: `after_backward` reads the gradients of pruned entries too (dL/dW', the straight-through
    #: estimator): the pruner masks gradients in its own `after_backward`, after the method, instead of
    #: as they are computed, so clipping and the logged gradient norm include the pruned entries
    needs_pruned_gradients: ClassVar[bool] = False
    #: the final masks meet `sparsity` exactly (the pruner's top-k); False: the method's own `select` sets
    #: them to the end (soft movement's threshold), and the achieved sparsity is what it gives
    exact_sparsity: ClassVar[bool] = True

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        self.options = options
        self.seed = seed

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Called once by the pruner with the model and its targets (structured methods read the layout)."""

    def on_start(self, total_steps: int, schedule: Schedule) -> None:
        """Called by `Pruner.start` with the run's length and its sparsity schedule (e.g. movement warns when
        the run is too short for its scores to carry signal)."""

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Importance of every weight of every target, same shapes as `weights`."""
        raise NotImplementedError

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor] | None:
        """Masks chosen by the method itself (e.g. a score threshold); None = top-k at `sparsity`."""
        return None

    def gradient_request(self) -> GradientRequest | None:
        """Gradient samples wanted before each mask update (e.g. oBERT's Fisher); None = none."""
        return None

    def observe_gradients(self, grads: Mapping[str, torch.Tensor]) -> None:
        """One sampled mini-batch's gradient of every target (pruned entries 0), `count` times per mask
        update, before `scores`; the sampler restores the training run's gradients afterwards."""

    def after_backward(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Once per optimizer step, with final gradients (accumulated, all-reduced, unscaled, clipped).

        Pruned entries' gradients are 0 unless `needs_pruned_gradients` is set; then they are dL/dW'.
        """

    def after_optimizer_step(self, weights: Mapping[str, torch.Tensor], lr: float) -> None:
        """Called after each optimizer step, before masks are re-applied."""

    def on_masks_changing(
        self,
        old: Mapping[str, torch.Tensor],
        new: Mapping[str, torch.Tensor],
        weights: Mapping[str, torch.Tensor],
    ) -> None:
        """Called by a mask update before the new masks are applied: the weights about to be pruned
        still hold their values (e.g. movement keeps them to restore when they regrow)."""

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """Called after the pruner set new masks; `final` once the target sparsity is reached."""

    def finalize(self) -> None:
        """Called by `Pruner.bake`: leave the model plain (e.g. fold learned gates into the weights)."""

    def log_metrics(self) -> dict[str, float]:
        """Numbers worth logging next to the loss (e.g. RPP's fraction of exact zeros)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Training-time tensors (e.g. movement scores) to save with a checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
