"""Accuracy at a real budget: the shipped pruning recipes against dense and a naive baseline, on two tasks.

For each task (the built-in rotten-tomatoes and reuters-r8, whole training split):
- dense minilm-l6 fine-tuned with seeds 0 and 1: the denominator is their mean test accuracy;
- from the dense seed-0 model (student and teacher): the named recipes `gmp-80/90/95` (GMP*: gradual
  global magnitude, one-shot initial step, LR rewinding, KD from the dense model) and `obert-80/90/95`
  (the same recipe with `obs`, oBERT), movement and soft movement at 90% on the GMP* recipe, a second seed
  of obert-90;
- the naive baseline at 90%: one-shot layer-wise magnitude of the dense model, then plain fine-tuning with
  the mask fixed for the same number of epochs as the recipes, no distillation.

Every cell is an ordinary `finetune` run in its own directory under --runs, so the grid resumes run by run
(an interrupted run from its last checkpoint); the JSON is rewritten after every cell, keeping committed
cells whose recipe is unchanged. One run at a time: pass --threads to use both cores for it.

    .venv/bin/python benchmarks/accuracy_grid.py                        # all cells (hours: resumable)
    .venv/bin/python benchmarks/accuracy_grid.py --tasks rotten-tomatoes --arms dense gmp
    .venv/bin/python benchmarks/accuracy_grid.py --table                # the docs' Markdown table
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from prunebert.recipe_library import named_recipes
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import finished_run, run_or_reuse
from results_table import write_results  # benchmarks/results_table.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent
TASKS = ("rotten-tomatoes", "reuters-r8")
#: (arm, sparsity, seed) cells of every task, in the order they run
CELLS: tuple[tuple[str, float, int], ...] = (
    ("dense", 0.0, 0),
    ("gmp", 0.9, 0),
    ("naive", 0.9, 0),
    ("dense", 0.0, 1),
    ("obs", 0.9, 0),
    ("gmp", 0.8, 0),
    ("gmp", 0.95, 0),
    ("movement", 0.9, 0),
    ("soft_movement", 0.9, 0),
    ("obs", 0.9, 1),
    ("obs", 0.8, 0),
    ("obs", 0.95, 0),
)
ARMS = tuple(dict.fromkeys(arm for arm, _, _ in CELLS))
DENSE_TRAIN = {"epochs": 3.0, "learning_rate": 5e-5, "batch_size": 32, "precision": "auto"}


def recipe_for(arm: str, sparsity: float, seed: int, task: str, runs: Path) -> dict[str, Any]:
    """The finetune recipe of one cell (the pruned arms start from, and distil from, dense seed 0)."""
    out = str(runs / task / f"{arm}-{round(sparsity * 100)}-s{seed}")
    base: dict[str, Any] = {"task": task, "seed": seed, "output_dir": out}
    if arm == "dense":
        return {**base, "model": "minilm-l6", "train": {**DENSE_TRAIN, "save_steps": 200}}
    dense = str(Path(recipe_for("dense", 0.0, 0, task, runs)["output_dir"]) / "model")
    family = "obert" if arm == "obs" else "gmp"  # movement and soft movement on the GMP* recipe
    shipped = yaml.safe_load(named_recipes()[f"{family}-{round(sparsity * 100)}"].path.read_text())
    shipped.pop("start_from", None)
    recipe = {**shipped, **base, "model": dense}
    recipe["train"] = {**shipped["train"], "save_steps": 200}
    recipe["distill"] = {**shipped["distill"], "teacher": dense}
    if arm == "naive":
        recipe.pop("distill")
        recipe["train"] = {**DENSE_TRAIN, "epochs": shipped["train"]["epochs"], "save_steps": 200}
        recipe["pruning"] = {"method": "magnitude", "sparsity": sparsity, "schedule": "oneshot"}
    elif arm != "gmp":
        recipe["pruning"] = {**shipped["pruning"], "method": arm}
    return recipe


def summarise(arm: str, sparsity: float, seed: int, task: str, results: dict[str, Any]) -> dict[str, Any]:
    """One row of the table."""
    return {
        "task": task,
        "arm": arm,
        "sparsity": sparsity,
        "seed": seed,
        "recipe": {k: v for k, v in results["recipe"].items() if k != "output_dir"},
        "test_accuracy": results["metrics"]["test"]["accuracy"],
        "dev_accuracy": results["metrics"]["dev"]["accuracy"],
        "achieved_sparsity": results["sparsity"]["overall"],
        "steps": results["train"]["steps"],
        "runtime_s": results["train"]["runtime_s"],
    }


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's test accuracy divided by its task's mean dense test accuracy over the seeds run."""
    dense: dict[str, list[float]] = {}
    for row in rows:
        if row["arm"] == "dense":
            dense.setdefault(row["task"], []).append(row["test_accuracy"])
    means = {task: statistics.mean(values) for task, values in dense.items()}
    return [
        {**row, "ratio_to_dense": row["test_accuracy"] / means[row["task"]]}
        for row in rows
        if row["task"] in means
    ]


def committed(output: Path, runs: Path) -> dict[tuple[str, str, float, int], dict[str, Any]]:
    """Cells already in the JSON whose recipe is still the one this script would run."""
    if not output.is_file():
        return {}
    known = {}
    for row in json.loads(output.read_text())["cells"]:
        key = (row["task"], row["arm"], float(row["sparsity"]), int(row["seed"]))
        want = FinetuneConfig.model_validate(recipe_for(*key[1:], key[0], runs)).model_dump(mode="json")
        want.pop("output_dir")
        if row["recipe"] == want:
            known[key] = row
    return known


def markdown_table(path: Path) -> str:
    """Test accuracy (ratio to the dense mean) per task, arm and sparsity; seeds side by side."""
    table = json.loads(path.read_text())
    cols = sorted({(c["arm"], c["sparsity"]) for c in table["cells"]}, key=lambda k: (ARMS.index(k[0]), k[1]))
    lines = ["| arm | sparsity | " + " | ".join(TASKS) + " |", "|---|---:|" + "---:|" * len(TASKS)]
    for arm, sparsity in cols:
        row = []
        for task in TASKS:
            cells = [
                c for c in table["cells"] if (c["task"], c["arm"], c["sparsity"]) == (task, arm, sparsity)
            ]
            text = " / ".join(_accuracy_text(c, sparsity) for c in cells)
            row.append(text or "not run yet")
        lines.append(f"| {arm} | {sparsity:.0%} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _accuracy_text(cell: dict[str, Any], target: float) -> str:
    """`82.6% (0.988)`, and the sparsity reached where it misses the target (soft movement's follows its
    regulariser, not the target), so a row never reads as a sparsity its model does not have."""
    text = f"{cell['test_accuracy']:.1%} ({cell['ratio_to_dense']:.3f})"
    reached = cell.get("achieved_sparsity")
    if reached is not None and abs(reached - target) > 0.005:
        text += f" at {reached:.1%} sparsity"
    return text


def _cell(text: str, parser: argparse.ArgumentParser) -> tuple[str, float, int]:
    """ARM:SPARSITY:SEED -> a cell of CELLS, or a usage error."""
    arm, _, rest = text.partition(":")
    sparsity, _, seed = rest.partition(":")
    try:
        cell = (arm, float(sparsity), int(seed or 0))
    except ValueError:
        cell = ("", 0.0, 0)
    if cell not in CELLS:
        parser.error(
            f"--cells {text}: not a cell of the grid; choose from "
            + " ".join(f"{a}:{s}:{n}" for a, s, n in CELLS)
        )
    return cell


def main() -> None:
    """Run the cells asked for in CELLS order, each on every task."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "accuracy_grid")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "accuracy_grid.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--cells",
        nargs="+",
        default=None,
        metavar="ARM:SPARSITY:SEED",
        help="only these cells (e.g. obs:0.9:0)",
    )
    parser.add_argument(
        "--collect", action="store_true", help="train nothing: add the cells whose runs have finished"
    )
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --output and exit")
    args = parser.parse_args()
    chosen = {_cell(text, parser) for text in args.cells} if args.cells else set(CELLS)
    if args.table:
        print(markdown_table(args.output))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    started, known = time.time(), committed(args.output, args.runs)
    rows = dict(known)
    every = [(t, *c) for t in TASKS for c in CELLS]
    for arm, sparsity, seed in CELLS:  # cell by cell across the tasks: both tasks' key cells come first
        for task in args.tasks:
            key = (task, arm, sparsity, seed)
            if arm not in args.arms or (arm, sparsity, seed) not in chosen or key in known:
                continue
            config = FinetuneConfig.model_validate(recipe_for(arm, sparsity, seed, task, args.runs))
            results = finished_run(config) if args.collect else None
            if args.collect and results is None:
                continue
            print(f"[grid] {task} {arm} {sparsity:.0%} seed {seed}", flush=True)
            rows[key] = summarise(arm, sparsity, seed, task, results or run_or_reuse(config))
            rows = {**committed(args.output, args.runs), **rows}  # another grid process may have written
            cells = with_ratios([rows[k] for k in every if k in rows])
            write_results(
                args.output, "accuracy_grid", {"cells": len(every)}, cells, len(rows) == len(every), started
            )
    print(markdown_table(args.output) if args.output.is_file() else "no finished cells yet")


if __name__ == "__main__":
    main()
