"""Fixed attention patterns on the embedded default: test accuracy with 0/4/8/12 of the 12 heads per layer
fixed (Raganato, Scherrer & Tiedemann 2020), one resumable run.

Each cell is an ordinary `prunebert finetune` run of minilm-l6 on rotten-tomatoes with the training settings
of `methods_grid.py` (its `base_recipe`, the same options and defaults) plus `fixed_attention:
{heads_per_layer: N}`: the first N heads of every layer attend by fixed patterns (current, previous,
next, left, right in turn) while everything else fine-tunes. A cell whose results.json exists is not
re-run, an interrupted one resumes from its checkpoint, and the JSON table is rewritten after every cell.

    .venv/bin/python benchmarks/fixed_attention.py --max-train-examples 4000 --epochs 2   # as methods_grid
    .venv/bin/python benchmarks/fixed_attention.py --model DIR --task FILE --heads 0 2 --max-steps 4 \\
        --runs /tmp/fa-runs --output /tmp/fa.json                                       # a smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from methods_grid import base_recipe
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse
from results_table import (  # benchmarks/results_table.py: the script's folder is on sys.path
    with_committed,
    write_results,
)

ROOT = Path(__file__).resolve().parent
HEADS = (0, 4, 8, 12)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """methods_grid's fine-tuning settings, with the smoke-test overrides if given."""
    recipe = base_recipe(args)
    recipe.update({k: v for k, v in (("model", args.model), ("task", args.task)) if v is not None})
    if args.max_steps is not None:
        recipe["train"] = {**recipe["train"], "max_steps": args.max_steps}
    return recipe


def cell_recipe(args: argparse.Namespace, heads: int) -> dict[str, Any]:
    """Recipe of the cell with `heads` fixed heads per layer (0: the dense baseline)."""
    recipe = {**settings(args), "output_dir": str(args.runs / f"fixed-{heads}")}
    if heads:
        recipe["fixed_attention"] = {"heads_per_layer": heads}
    return recipe


def summarise(result: dict[str, Any], heads: int, dense_test: float | None) -> dict[str, Any]:
    """The row of the table for one finished cell."""
    test = result["metrics"]["test"]["accuracy"]
    fixed = result.get("fixed_attention") or {}
    return {
        "fixed_heads_per_layer": heads,
        "patterns": sorted({p for layer in fixed.values() for p in layer.values()}),
        "test_accuracy": test,
        "dev_accuracy": result["metrics"]["dev"]["accuracy"],
        "ratio_to_dense": test / dense_test if dense_test else (1.0 if heads == 0 else None),
        "train_loss": result["train"]["train_loss"],
        "steps": result["train"]["steps"],
        "runtime_s": result["train"]["runtime_s"],
    }


def fixed_heads(row: dict[str, Any]) -> int:
    """A table row's key: its number of fixed heads per layer."""
    return int(row["fixed_heads_per_layer"])


def write_table(
    args: argparse.Namespace, rows: list[dict[str, Any]], known: dict[int, dict[str, Any]], started: float
) -> None:
    """Rewrite the JSON table with every finished cell so far, keeping committed cells of other head
    counts (a run of some of them must not drop the rest)."""
    cells, complete = with_committed(rows, known, fixed_heads, HEADS)
    cells.sort(key=fixed_heads)
    write_results(args.output, "fixed_attention", settings(args), cells, complete, started)


def committed_rows(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Cells already in the output JSON with the same settings: a fresh clone does not re-run them."""
    if not args.output.is_file():
        return {}
    table = json.loads(args.output.read_text())
    if table.get("settings") != settings(args):
        return {}
    return {fixed_heads(row): row for row in table["cells"]}


def main() -> None:
    """Run the cells, dense (0 fixed heads) first."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", type=int, default=list(HEADS), help="fixed heads per layer")
    parser.add_argument("--max-train-examples", type=int, default=None, help="subsample train (default all)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--model", help="smoke tests: another model (default minilm-l6)")
    parser.add_argument("--task", help="smoke tests: another task (default rotten-tomatoes)")
    parser.add_argument("--max-steps", type=int, help="smoke tests: stop every cell after N steps")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "fixed_attention")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "fixed_attention.json")
    args = parser.parse_args()
    args.heads = sorted(set(args.heads))
    started, known = time.time(), committed_rows(args)
    rows: list[dict[str, Any]] = []
    dense_test = None
    for heads in args.heads:
        if heads in known:
            rows.append(known[heads])
        else:
            print(f"[fixed attention] {heads} heads per layer -> {args.runs / f'fixed-{heads}'}", flush=True)
            result = run_or_reuse(FinetuneConfig.model_validate(cell_recipe(args, heads)))
            rows.append(summarise(result, heads, dense_test))
        if heads == 0:
            dense_test = float(rows[-1]["test_accuracy"])
        write_table(args, rows, known, started)
    for row in rows:
        ratio = "n/a" if row["ratio_to_dense"] is None else f"{row['ratio_to_dense']:.4f}"
        print(
            f"{row['fixed_heads_per_layer']:>3} fixed heads/layer  test {row['test_accuracy']:.4f}  "
            f"ratio {ratio}  train loss {row['train_loss']:.4f}"
        )


if __name__ == "__main__":
    main()
