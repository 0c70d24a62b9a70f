"""Sparsity schedules: pure functions of the optimizer step, like learning-rate schedules.

Each schedule answers one question, `sparsity_at(step)`: the fraction of target weights that should be
zero once the pruner has run at `step`. Methods decide *which* weights; schedules decide *how many*.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

from prunebert.errors import PrunebertError

__all__ = [
    "SCHEDULES",
    "Cubic",
    "Fixed",
    "Iterative",
    "OneShot",
    "RewindLR",
    "Schedule",
    "build_schedule",
    "final_step",
    "mask_update_steps",
]


class Schedule(Protocol):
    """The fraction of weights pruned after the pruner has run at `step` (0-based optimizer steps)."""

    def sparsity_at(self, step: int) -> float: ...


@dataclass(frozen=True)
class Fixed:
    """Never changes the masks: used when a mask found elsewhere is transferred (fine-tuning)."""

    sparsity: float = 0.0

    def sparsity_at(self, step: int) -> float:
        """The constant sparsity of the transferred masks."""
        return self.sparsity


@dataclass(frozen=True)
class OneShot:
    """All pruning at one step (default: before the first update), then train with the mask fixed."""

    target: float
    at_step: int = 0

    def sparsity_at(self, step: int) -> float:
        """0 before `at_step`, `target` from then on."""
        return self.target if step >= self.at_step else 0.0


@dataclass(frozen=True)
class Cubic:
    """Gradual pruning of Zhu & Gupta 2017 ("To prune, or not to prune"), eq. 1.

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt)) ** 3   for t in {t_0, t_0 + dt, ..., t_0 + n*dt}

    Sparsity rises fast at first, while redundant weights are plentiful, and slowly near the target.
    Between update steps the sparsity holds its last value; before t_0 nothing is pruned.
    """

    target: float
    start_step: int
    end_step: int
    frequency: int = 10
    initial: float = 0.0
    #: when set, exactly this many updates, at the first steps past k/updates of the window (k = 1..n),
    #: instead of one every `frequency` steps
    updates: int | None = None

    def sparsity_at(self, step: int) -> float:
        """Sparsity at the last update step at or before `step`."""
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.target
        span = self.end_step - self.start_step
        if self.updates is not None:
            progress = (step - self.start_step) * self.updates // span / self.updates
        else:
            t = self.start_step + (step - self.start_step) // self.frequency * self.frequency
            progress = (t - self.start_step) / span
        return self.target + (self.initial - self.target) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class Iterative:
    """Iterative pruning with retraining (Han et al. 2015; the NIP baseline of Guo et al. 2019).

    `iterations` equal increments of sparsity at evenly spaced steps from `start_step`; the training
    between two increments (and after the last) retrains the surviving weights.
    """

    target: float
    start_step: int
    end_step: int
    iterations: int = 4

    def sparsity_at(self, step: int) -> float:
        """target * k / iterations, where k increments have happened by `step`."""
        if step < self.start_step:
            return 0.0
        interval = max(1, (self.end_step - self.start_step) // self.iterations)
        done = min(self.iterations, 1 + (step - self.start_step) // interval)
        return self.target * done / self.iterations


SCHEDULES = ("oneshot", "cubic", "iterative", "fixed")


def build_schedule(
    name: str,
    target: float,
    total_steps: int,
    start_fraction: float = 0.0,
    end_fraction: float = 0.75,
    frequency: int = 10,
    iterations: int = 4,
    initial: float = 0.0,
    updates: int | None = None,
) -> Schedule:
    """Resolve a named schedule whose window is given as fractions of `total_steps`; `updates` (cubic)
    spreads that many mask updates evenly over the window instead of one every `frequency` steps."""
    start = math.floor(start_fraction * total_steps)
    end = max(start + 1, math.floor(end_fraction * total_steps))
    if name == "oneshot":
        return OneShot(target, start)
    if name == "cubic":
        return Cubic(target, start, end, max(1, frequency), initial, updates)
    if name == "iterative":
        return Iterative(target, start, end, max(1, iterations))
    if name == "fixed":
        return Fixed(target)
    raise PrunebertError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def mask_update_steps(schedule: Schedule, total_steps: int) -> list[int]:
    """The steps in [1, total_steps) at which `schedule` changes the sparsity (the pruner's mask updates)."""
    return [t for t in range(1, total_steps) if schedule.sparsity_at(t) != schedule.sparsity_at(t - 1)]


def final_step(schedule: Schedule, target: float, total_steps: int) -> int:
    """The first step in [0, total_steps] at which `schedule` reaches `target` (the final mask update);
    `total_steps` if it never does (a fixed schedule below the target)."""
    return next((t for t in range(total_steps + 1) if schedule.sparsity_at(t) >= target), total_steps)


@dataclass(frozen=True)
class RewindLR:
    """Learning-rate rewinding for gradual pruning (Renda et al. 2020; the cyclic LR of oBERT's and GMP*'s
    recipes, Kurtic et al. 2022, Kurtic & Alistarh 2022): the factor on the peak learning rate at `step`.

    Each mask update (a step in `restarts`) starts a new cycle at the peak, which decays linearly to `floor`
    by the next update; after the last update the recovery phase decays linearly to 0 at `total`. A linear
    warm-up over the first `warmup` steps multiplies the first cycle, as in the plain linear schedule.

        f(t) = w(t) * (1 - (1 - floor) * (t - r) / (n - r))    r <= t < n, r, n consecutive restarts
        f(t) = w(t) * (total - t) / (total - r)                 r = the last restart <= t
        w(t) = min(1, t / warmup)
    """

    restarts: tuple[int, ...]
    total: int
    warmup: int = 0
    floor: float = 0.1

    def factor(self, step: int) -> float:
        """Multiplier of the peak learning rate for the optimizer step after `step` steps."""
        warm = min(1.0, step / self.warmup) if self.warmup > 0 else 1.0
        bounds = [0, *(r for r in self.restarts if 0 < r < self.total), self.total]
        for start, end in itertools.pairwise(bounds):
            if start <= step < end:
                if end == self.total:
                    return warm * (self.total - step) / (self.total - start)
                return warm * (1.0 - (1.0 - self.floor) * (step - start) / (end - start))
        return 0.0
