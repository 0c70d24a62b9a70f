"""Seed methods x sparsities on the embedded default: test accuracy and its ratio to dense, one resumable run.

Every cell is an ordinary `prunebert finetune` run (minilm-l6 on rotten-tomatoes, fixed split and seeds)
in its own directory under --runs; a cell whose results.json exists is not re-run, and an interrupted
cell resumes from its last checkpoint. The JSON table is rewritten after every cell, so a partial grid
is still a valid (partial) result. The dense cell is also the teacher of the +KD methods.

    .venv/bin/python benchmarks/methods_grid.py                      # the whole grid (hours on 2 cores)
    .venv/bin/python benchmarks/methods_grid.py --methods magnitude --sparsities 0.9
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prunebert.methods.registry import method_options
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse
from results_table import (  # benchmarks/results_table.py: the script's folder is on sys.path
    with_committed,
    write_results,
)

ROOT = Path(__file__).resolve().parent
METHODS: dict[str, dict[str, Any]] = {
    "magnitude": {"pruning": {"method": "magnitude"}},
    "nip": {"pruning": {"method": "nip"}},
    "rpp": {"pruning": {"method": "rpp"}},
    "movement": {"pruning": {"method": "movement"}},
    "soft_movement": {"pruning": {"method": "soft_movement"}},
    "magnitude+kd": {"pruning": {"method": "magnitude"}, "kd": True},
    "movement+kd": {"pruning": {"method": "movement"}, "kd": True},
}
SPARSITIES = (0.9, 0.95, 0.8, 0.5)


def base_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning settings every cell shares, every default spelled out (they decide reuse)."""
    recipe = {
        "model": "minilm-l6",
        "task": "rotten-tomatoes",
        "seed": 0,
        "max_seq_length": 64,
        "max_train_examples": args.max_train_examples,
        "train": {
            "epochs": args.epochs,
            "batch_size": 32,
            "learning_rate": args.learning_rate,
            "logging_steps": 25,
            "save_steps": 100,
        },
    }
    full = FinetuneConfig.model_validate(recipe).model_dump(mode="json")
    return {key: full[key] for key in recipe}


def cell_recipe(args: argparse.Namespace, method: str, sparsity: float, teacher: Path) -> dict[str, Any]:
    """Recipe of one pruned cell, its method's options written out with every default: a cell recorded
    before a default changed differs from today's recipe, so it is re-run rather than reused."""
    spec = METHODS[method]
    recipe = base_recipe(args)
    pruning = spec["pruning"]
    options = method_options(pruning["method"], pruning.get("options")).model_dump(mode="json")
    recipe["pruning"] = {**pruning, "sparsity": sparsity, "options": options}
    if spec.get("kd"):
        recipe["distill"] = {"teacher": str(teacher)}
    recipe["output_dir"] = str(args.runs / f"{method}-{round(sparsity * 100)}")
    return recipe


def run_cell(recipe: dict[str, Any]) -> dict[str, Any]:
    """Run a cell (or read its finished results, if made by the same recipe)."""
    return run_or_reuse(FinetuneConfig.model_validate(recipe))


def summarise(result: dict[str, Any], dense_test: float | None) -> dict[str, Any]:
    """The row of the table for one finished cell, with the pruning settings it ran with."""
    test = result["metrics"]["test"]["accuracy"]
    return {
        "pruning": result["recipe"]["pruning"],
        "test_accuracy": test,
        "dev_accuracy": result["metrics"]["dev"]["accuracy"],
        "ratio_to_dense": test / dense_test if dense_test else 1.0,
        "achieved_sparsity": result["sparsity"]["overall"],
        "train_loss": result["train"]["train_loss"],
        "steps": result["train"]["steps"],
        "runtime_s": result["train"]["runtime_s"],
    }


def write_table(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    known: dict[tuple[str, float], dict[str, Any]],
    started: float,
) -> None:
    """Rewrite the JSON table with every finished cell so far, keeping committed cells of other
    methods / sparsities (a run of a subset of the grid must not drop the rest)."""
    every = [(m, float(s)) for m in METHODS for s in SPARSITIES]
    cells, complete = with_committed(rows, known, lambda row: (row["method"], float(row["sparsity"])), every)
    write_results(args.output, "methods_grid", base_recipe(args), cells, complete, started)


def cell_pruning(args: argparse.Namespace, method: str, sparsity: float) -> dict[str, Any] | None:
    """The full pruning settings of a cell, every method default resolved (None for dense)."""
    if method == "dense":
        return None
    recipe = cell_recipe(args, method, sparsity, args.runs / "dense")
    pruning: dict[str, Any] = FinetuneConfig.model_validate(recipe).model_dump(mode="json")["pruning"]
    return pruning


def committed_rows(args: argparse.Namespace) -> dict[tuple[str, float], dict[str, Any]]:
    """Cells already in the output JSON with the same settings: a fresh clone does not re-run them. A
    cell whose method's defaults have changed since (its recorded pruning settings differ) is re-run."""
    if not args.output.is_file():
        return {}
    table = json.loads(args.output.read_text())
    if table.get("settings") != base_recipe(args):
        return {}
    rows = {(row["method"], float(row["sparsity"])): row for row in table["cells"]}
    return {key: row for key, row in rows.items() if row.get("pruning") == cell_pruning(args, *key)}


def markdown_table(path: Path) -> str:
    """The README's table of a grid JSON: one row per method, one column per sparsity (test acc, ratio)."""
    table = json.loads(path.read_text())
    cells = {(c["method"], float(c["sparsity"])): c for c in table["cells"]}
    sparsities = sorted(set(SPARSITIES) | {s for m, s in cells if m != "dense"})
    dense = cells[("dense", 0.0)]
    head = "| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
    lines = [head, "|---|" + "---:|" * len(sparsities)]
    lines.append(f"| dense: {dense['test_accuracy']:.1%} | " + " | ".join("" for _ in sparsities) + " |")
    for method in METHODS:
        row = [cells.get((method, s)) for s in sparsities]
        text = [f"{c['test_accuracy']:.1%} ({c['ratio_to_dense']:.3f})" if c else "not run yet" for c in row]
        lines.append(f"| {method} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run the grid, dense first."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--max-train-examples", type=int, default=None, help="subsample train (default all)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "methods_grid")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "methods_grid.json")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --output and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.output))
        return
    started = time.time()
    known = committed_rows(args)
    dense_recipe = {**base_recipe(args), "output_dir": str(args.runs / "dense")}
    needs_teacher = any(
        METHODS[m].get("kd") and (m, s) not in known for m in args.methods for s in args.sparsities
    )
    if ("dense", 0.0) in known and not needs_teacher:
        rows = [known[("dense", 0.0)]]
    else:
        dense = run_cell(dense_recipe)
        rows = [{"method": "dense", "sparsity": 0.0, **summarise(dense, None)}]
    dense_test = float(rows[0]["test_accuracy"])
    write_table(args, rows, known, started)
    for sparsity in args.sparsities:
        for method in args.methods:
            if (method, sparsity) in known:
                rows.append(known[(method, sparsity)])
                continue
            recipe = cell_recipe(args, method, sparsity, Path(dense_recipe["output_dir"]))
            print(f"[grid] {method} @ {sparsity:.0%} -> {recipe['output_dir']}", flush=True)
            rows.append({"method": method, "sparsity": sparsity, **summarise(run_cell(recipe), dense_test)})
            write_table(args, rows, known, started)
    for row in rows:
        print(
            f"{row['method']:>14} {row['sparsity']:>5.0%}  test {row['test_accuracy']:.4f}  "
            f"ratio {row['ratio_to_dense']:.4f}  sparsity {row['achieved_sparsity']:.4f}"
        )


if __name__ == "__main__":
    main()
