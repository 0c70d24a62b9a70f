"""Schedules are pure functions of the step: exact values from the formulas."""

import itertools

import pytest

from prunebert.errors import PrunebertError
from prunebert.schedules import (
    Cubic,
    Fixed,
    Iterative,
    OneShot,
    RewindLR,
    build_schedule,
    mask_update_steps,
)


def test_cubic_matches_zhu_gupta_formula() -> None:
    s = Cubic(target=0.9, start_step=0, end_step=100, frequency=10)
    assert s.sparsity_at(0) == 0.0
    assert s.sparsity_at(10) == pytest.approx(0.9 - 0.9 * 0.9**3)
    assert s.sparsity_at(15) == s.sparsity_at(10)  # held between updates
    assert s.sparsity_at(50) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert s.sparsity_at(100) == 0.9
    assert s.sparsity_at(1000) == 0.9


def test_cubic_is_monotone_and_starts_late() -> None:
    s = Cubic(target=0.5, start_step=20, end_step=80, frequency=3, initial=0.1)
    values = [s.sparsity_at(t) for t in range(120)]
    assert values[:20] == [0.0] * 20
    assert values[20] == pytest.approx(0.1)
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_oneshot_and_fixed() -> None:
    assert OneShot(0.4).sparsity_at(0) == 0.4
    assert OneShot(0.4, at_step=5).sparsity_at(4) == 0.0
    assert Fixed(0.3).sparsity_at(123) == 0.3


def test_iterative_equal_rounds() -> None:
    s = Iterative(target=0.8, start_step=0, end_step=100, iterations=4)
    assert [s.sparsity_at(t) for t in (0, 24, 25, 50, 75, 99)] == pytest.approx(
        [0.2, 0.2, 0.4, 0.6, 0.8, 0.8]
    )


def test_build_schedule_resolves_fractions() -> None:
    s = build_schedule("cubic", 0.6, total_steps=200, start_fraction=0.1, end_fraction=0.5, frequency=4)
    assert s == Cubic(0.6, 20, 100, 4, 0.0)
    with pytest.raises(PrunebertError, match="unknown schedule"):
        build_schedule("linear", 0.5, 10)


def test_mask_update_steps_of_a_cubic_schedule() -> None:
    s = Cubic(target=0.9, start_step=0, end_step=40, frequency=10, initial=0.5)
    assert mask_update_steps(s, 100) == [10, 20, 30, 40]
    assert mask_update_steps(OneShot(0.9), 100) == []
    assert mask_update_steps(Fixed(0.5), 100) == []


def test_rewind_lr_restarts_at_every_mask_update_and_recovers_to_zero() -> None:
    lr = RewindLR(restarts=(10, 20), total=40, warmup=0, floor=0.1)
    assert [lr.factor(t) for t in (0, 5, 9)] == pytest.approx([1.0, 1 - 0.9 * 0.5, 1 - 0.9 * 0.9])
    assert lr.factor(10) == 1.0  # rewound at the mask update
    assert lr.factor(19) == pytest.approx(1 - 0.9 * 0.9)
    assert [lr.factor(t) for t in (20, 30, 39, 40)] == pytest.approx([1.0, 0.5, 1 / 20, 0.0])


def test_rewind_lr_warms_up_the_first_cycle_and_ignores_out_of_range_restarts() -> None:
    lr = RewindLR(restarts=(0, 50, 200), total=100, warmup=10, floor=0.0)
    assert lr.factor(0) == 0.0
    assert lr.factor(5) == pytest.approx(0.5 * (1 - 5 / 50))
    assert lr.factor(50) == 1.0
    assert lr.factor(75) == pytest.approx(0.5)
    assert RewindLR(restarts=(), total=10).factor(5) == pytest.approx(0.5)  # plain linear decay


def test_cubic_updates_spread_evenly_over_the_window_whatever_the_run_length() -> None:
    for total in (1280, 620):
        s = build_schedule("cubic", 0.9, total, 0.0, 0.5, frequency=10, initial=0.5, updates=8)
        steps = mask_update_steps(s, total)
        assert len(steps) == 8 and steps[-1] == total // 2
        assert s.sparsity_at(0) == 0.5 and s.sparsity_at(total - 1) == 0.9


def test_cubic_with_updates_follows_the_formula_at_each_fraction_of_the_window() -> None:
    s = Cubic(target=0.9, start_step=10, end_step=110, initial=0.5, updates=4)
    assert mask_update_steps(s, 200) == [10, 35, 60, 85, 110]  # 10: the initial one-shot
    assert s.sparsity_at(10) == 0.5 and s.sparsity_at(34) == 0.5
    assert s.sparsity_at(35) == pytest.approx(0.9 - 0.4 * 0.75**3)
    assert s.sparsity_at(109) == pytest.approx(0.9 - 0.4 * 0.25**3)
