"""What to prune, how and when: the validated pruning section of every recipe."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from prunebert.methods.base import parse_options
from prunebert.methods.registry import method_class
from prunebert.recipes import StrictModel
from prunebert.targets import ENCODER_ROLES

__all__ = ["PruningConfig", "StrictModel"]


class PruningConfig(StrictModel):
    """How a pruner chooses, when it prunes and which weights it may touch."""

    recorded_if_set: ClassVar[tuple[str, ...]] = ("updates",)

    method: str = Field("magnitude", description="registered method name (list them: `prunebert methods`)")
    sparsity: float = Field(0.4, ge=0.0, lt=1.0, description="final fraction of target weights set to zero")
    scope: Literal["layer", "global"] = Field(
        "layer", description="layer: every matrix to the same sparsity; global: one ranking over all targets"
    )
    schedule: Literal["oneshot", "cubic", "iterative", "fixed"] = Field(
        "cubic", description="how sparsity grows over training (fixed: keep masks given by a checkpoint)"
    )
    start_fraction: float = Field(0.0, ge=0.0, le=1.0, description="pruning starts at this fraction of steps")
    end_fraction: float = Field(0.75, ge=0.0, le=1.0, description="target sparsity reached at this fraction")
    frequency: int = Field(10, ge=1, description="cubic schedule: steps between mask updates")
    updates: int | None = Field(
        None,
        ge=1,
        description="cubic schedule: mask updates spread evenly from start to end (replaces `frequency`, "
        "so a recipe fits any run length)",
    )
    iterations: int = Field(4, ge=1, description="iterative schedule: number of pruning rounds")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="cubic schedule: sparsity at the start")
    roles: list[str] = Field(
        default_factory=lambda: list(ENCODER_ROLES), description="encoder matrices to prune, by role"
    )
    targets: list[str] = Field(
        default_factory=list, description="module-name regexes; when given they replace `roles`"
    )
    include_embeddings: bool = Field(False, description="also prune the word-embedding matrix")
    options: dict[str, Any] = Field(default_factory=dict, description="method-specific options")
    seed: int = Field(0, description="seed for methods with randomness (random pruning)")

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        """Fields a recipe leaves out take the method's own defaults (e.g. NIP: iterative schedule)."""
        if not isinstance(data, dict):
            return data
        method = method_class(str(data.get("method", "magnitude")))
        return {**method.defaults, **data}

    @model_validator(mode="after")
    def _method_known(self) -> PruningConfig:
        """Unknown methods and options fail when the recipe is read, not after data loading."""
        parse_options(method_class(self.method).options_cls, self.method, self.options)
        return self

    @field_validator("targets")
    @classmethod
    def _regexes(cls, targets: list[str]) -> list[str]:
        """Every target must be a valid regular expression (checked here, not mid-run)."""
        for pattern in targets:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return targets

    @model_validator(mode="after")
    def _window(self) -> PruningConfig:
        if self.schedule in ("cubic", "iterative") and self.end_fraction < self.start_fraction:
            made_for = method_class(self.method).defaults
            if made_for.get("schedule", self.schedule) != self.schedule:  # the window is the method's
                raise ValueError(
                    f"method {self.method} works with the {made_for['schedule']} schedule (it sets "
                    f"start_fraction {self.start_fraction}), not {self.schedule}; pass --pruning.schedule "
                    f"{made_for['schedule']}"
                )
            raise ValueError(
                f"end_fraction {self.end_fraction} is before start_fraction {self.start_fraction}; swap them"
            )
        return self
