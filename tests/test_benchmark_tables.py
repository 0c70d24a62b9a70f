"""The resumable benchmarks' JSON tables: running a subset of a grid keeps the other committed cells."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmarks import each other as scripts do
    import fixed_attention
    import methods_grid

    return methods_grid, fixed_attention


def _grid_args(output: Path, methods: list[str], sparsities: list[float]) -> argparse.Namespace:
    return argparse.Namespace(
        output=output, methods=methods, sparsities=sparsities, max_train_examples=4000, epochs=2.0,
        learning_rate=1e-4, model=None, task=None, max_steps=None, runs=output.parent / "runs",
    )  # fmt: skip


def _row(method: str, sparsity: float, grid: ModuleType | None = None) -> dict[str, Any]:
    """A finished cell as the grid records it (with its resolved pruning settings when `grid` is given)."""
    row: dict[str, Any] = {"method": method, "sparsity": sparsity, "test_accuracy": 0.5}
    if grid is not None:
        args = _grid_args(Path("unused.json"), [], [])
        row["pruning"] = grid.cell_pruning(args, method, sparsity)
    return row


def test_methods_grid_subset_run_keeps_the_other_cells(
    scripts: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    grid, _ = scripts
    out = tmp_path / "grid.json"
    every = [_row("dense", 0.0, grid)] + [_row(m, s, grid) for m in grid.METHODS for s in grid.SPARSITIES]
    everything = _grid_args(out, list(grid.METHODS), list(grid.SPARSITIES))
    grid.write_table(everything, every[:3], {}, 0.0)
    assert json.loads(out.read_text())["complete"] is False

    grid.write_table(everything, every, {}, 0.0)
    assert json.loads(out.read_text())["complete"] is True

    subset = _grid_args(out, ["magnitude"], [0.5])
    known = grid.committed_rows(subset)
    assert len(known) == len(every)
    grid.write_table(subset, [every[0], {**_row("magnitude", 0.5, grid), "test_accuracy": 0.9}], known, 0.0)
    table = json.loads(out.read_text())
    cells = {(c["method"], c["sparsity"]): c["test_accuracy"] for c in table["cells"]}
    assert len(cells) == len(every) and table["complete"] is True
    assert cells[("magnitude", 0.5)] == 0.9 and cells[("nip", 0.9)] == 0.5


def test_fixed_attention_subset_run_keeps_the_other_cells(
    scripts: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    _, fixed = scripts
    args = _grid_args(tmp_path / "fa.json", [], [])
    rows = [{"fixed_heads_per_layer": h, "test_accuracy": 0.5} for h in fixed.HEADS]
    fixed.write_table(args, rows, {}, 0.0)
    known = fixed.committed_rows(args)
    fixed.write_table(args, [{"fixed_heads_per_layer": 4, "test_accuracy": 0.7}], known, 0.0)
    table = json.loads((tmp_path / "fa.json").read_text())
    assert [c["fixed_heads_per_layer"] for c in table["cells"]] == list(fixed.HEADS)
    assert table["cells"][1]["test_accuracy"] == 0.7 and table["complete"] is True


def test_methods_grid_reruns_a_cell_whose_method_defaults_changed(
    scripts: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    grid, _ = scripts
    args = _grid_args(tmp_path / "grid.json", list(grid.METHODS), list(grid.SPARSITIES))
    stale = {**_row("movement", 0.9, grid), "pruning": {**grid.cell_pruning(args, "movement", 0.9)}}
    stale["pruning"]["start_fraction"] = 0.0  # recorded before movement's warm-up default
    rows = [_row("dense", 0.0, grid), _row("magnitude", 0.9, grid), stale, _row("nip", 0.5)]  # nip: no record
    grid.write_table(args, rows, {}, 0.0)
    assert set(grid.committed_rows(args)) == {("dense", 0.0), ("magnitude", 0.9)}


def test_methods_grid_records_resolved_options_and_reruns_cells_recorded_without_them(
    scripts: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    grid, _ = scripts
    args = _grid_args(tmp_path / "grid.json", list(grid.METHODS), list(grid.SPARSITIES))
    assert grid.cell_pruning(args, "rpp", 0.9)["options"] == {"lam": None, "eps": 1e-3, "reweight_every": 1}
    movement = {"score_optimizer": "adam", "lr_scores": None}
    assert grid.cell_pruning(args, "movement+kd", 0.9)["options"] == movement
    assert grid.cell_pruning(args, "magnitude", 0.9)["options"] == {}  # no options: old records still match

    def recorded(method: str, **options: object) -> dict[str, Any]:
        row = _row(method, 0.9, grid)
        return {**row, "pruning": {**row["pruning"], "options": options}}

    old_rpp = recorded("rpp", lam=0.01, eps=1e-3, reweight_every=1)  # rpp's default lam before it was derived
    rows = [_row("dense", 0.0, grid), recorded("magnitude"), recorded("movement"), old_rpp]
    rows.append(_row("rpp", 0.5, grid))  # recorded with today's resolved options
    grid.write_table(args, rows, {}, 0.0)
    assert set(grid.committed_rows(args)) == {("dense", 0.0), ("magnitude", 0.9), ("rpp", 0.5)}


def test_accuracy_grid_table_says_the_sparsity_a_cell_reached_when_it_missed_the_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import accuracy_grid

    def cell(arm: str, target: float, reached: float, accuracy: float) -> dict[str, Any]:
        return {
            "task": "rotten-tomatoes", "arm": arm, "sparsity": target, "seed": 0, "test_accuracy": accuracy,
            "ratio_to_dense": accuracy / 0.8, "achieved_sparsity": reached,
        }  # fmt: skip

    table = tmp_path / "grid.json"
    cells = [cell("obs", 0.9, 0.9000000188, 0.81), cell("soft_movement", 0.9, 0.537, 0.826)]
    table.write_text(json.dumps({"cells": cells}))
    rows = accuracy_grid.markdown_table(table).splitlines()
    assert "| obs | 90% | 81.0% (1.012) | not run yet |" in rows
    assert "| soft_movement | 90% | 82.6% (1.032) at 53.7% sparsity | not run yet |" in rows
