"""Retraining-free structured pruning to a requested speed-up (issue 17): `prunebert shrink`, measured.

Per task, runtime and batch size, for each requested speed-up S and distillation budget D (0 = the paper's
retraining-free setting): one `run_shrink` of the dense fine-tuned model (Fisher over 2,048 training
examples, search against this machine's latency table, rearrangement, least-squares tuning, slim), with
D steps of distillation from the dense model when D > 0, then test accuracy of dense and shrunk models
and the speed-up measured against dense torch fp32 in the same bench run. Each cell records requested vs
measured speed-up, accuracy change, the command's wall time (shrink alone and in all) and the CPU with
its instruction sets. The JSON is rewritten after every cell; a cell already there with the same settings
is kept.

    B="OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/shrink.py --task rotten-tomatoes \\
        --model DENSE --output benchmarks/results/shrink_rotten-tomatoes.json"
    $B --speedups 1.5 2 2.5 3 4 --distill-steps 0                # the retraining-free points
    $B --speedups 2.5 3 --distill-steps 250                       # with 250 steps of distillation
    $B --runtime openvino-int8 --speedups 10 --distill-steps 250  # OpenVINO static int8, batch 1
    .venv/bin/python benchmarks/shrink.py --table                # the Markdown table of the JSON
    .venv/bin/python benchmarks/shrink.py --rebench --rounds 9   # measure every cell again, quietly
    .venv/bin/python benchmarks/shrink.py --score                 # int8/bf16 accuracy of older cells

An int8 or bf16 cell's accuracy is measured twice: the fp32 model (`test`) and the model as its runtime
runs it (`deployed`: the same export and int8 calibration the bench times, on the whole test split).

A cell's speed-up is measured at the end of its own run; with other work on the machine that number is
noisy, so `--rebench` measures every saved model against dense again in one `prunebert bench` run per
cell (same runtime, batch, sequence length, one thread) and keeps the run's own measurement beside it
as `measured_in_run`.

Without --model, the dense model is fine-tuned first (`prunebert.stages.finetune`: minilm-l6, the full
training split, 3 epochs, lr 5e-5, seed 0) under --runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from prunebert.hardware import cpu_features, cpu_name
from prunebert.io import write_json
from prunebert.shrink.config import ShrinkConfig
from prunebert.shrink.job import bench_shrunk, run_shrink, score_deployed
from prunebert.stages.common import TrainConfig
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse

ROOT = Path(__file__).resolve().parent
RETRIES = ShrinkConfig.model_fields["speed_retries"].default  # cells from before the speed loop run again


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="dense fine-tuned model (default: fine-tune minilm-l6 first)")
    parser.add_argument("--task", default="rotten-tomatoes")
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--distill-steps", type=int, nargs="+", default=[0, 250])
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=2048)
    parser.add_argument("--distill-lr", type=float, default=None, help="peak lr of the distillation")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "shrink")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "shrink.json")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --output")
    parser.add_argument("--rebench", action="store_true", help="measure every cell's model again")
    parser.add_argument(
        "--score", action="store_true", help="score cells not yet scored in their runtime on test"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="with --rebench / --score: just the cells with these names"
    )
    parser.add_argument("--redo", action="store_true", help="run the cells again even if already there")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved bench rounds")
    return parser.parse_args()


def _dense(args: argparse.Namespace) -> str:
    """The dense fine-tuned model: --model, or a fine-tune of minilm-l6 (reused once finished)."""
    if args.model:
        return str(args.model)
    config = FinetuneConfig(
        model="minilm-l6",
        task=args.task,
        output_dir=args.runs / f"dense-{args.task}",
        seed=0,
        train=TrainConfig(epochs=3, learning_rate=5e-5, save_steps=100000),
    )
    return str(run_or_reuse(config)["model_dir"])


def _name(args: argparse.Namespace, speedup: float, steps: int) -> str:
    lr = f"-lr{args.distill_lr:g}" if args.distill_lr is not None and steps else ""
    return f"{args.task}-{args.runtime}-b{args.batch_size}-x{speedup:g}-d{steps}{lr}"


def _cell(args: argparse.Namespace, model: str, speedup: float, steps: int) -> dict[str, Any]:
    """One `run_shrink` and what the table needs of it."""
    name = _name(args, speedup, steps)
    lr = {"distill_learning_rate": args.distill_lr} if args.distill_lr is not None else {}
    cfg = ShrinkConfig(
        **lr,
        task=args.task,
        output_dir=args.runs / name,
        speedup=speedup,
        runtime=args.runtime,
        batch_size=args.batch_size,
        calibration=args.calibration,
        bench_rounds=args.rounds,
        evaluate=True,
        distill_steps=steps,
    )
    start = time.perf_counter()
    report = run_shrink(model, cfg, overwrite=True)
    metrics = report["metrics"]
    shrunk = metrics["distilled"] if steps else metrics["zero_step"]
    return {
        "name": name,
        "settings": {
            "speedup": speedup,
            "distill_steps": steps,
            "distill_learning_rate": cfg.distill_learning_rate,
            "runtime": args.runtime,
            "batch_size": args.batch_size,
            "calibration": args.calibration,
            "model": model,
            "scores": cfg.scores,
            "tune": cfg.tune,
            "speed_tolerance": cfg.speed_tolerance,
            "speed_retries": cfg.speed_retries,
        },
        "searches": len(report.get("attempts", [])) or 1,
        "attempts": report.get("attempts", []),
        "requested_speedup": speedup,
        "measured_speedup": report["measured"]["speedup"],
        "measured_range": report["measured"]["speedup_range"],
        "predicted_speedup": report["target"]["baseline_torch_fp32_s"] / report["choice"]["predicted_cost"],
        "dense_test": metrics["dense"]["test"],
        "zero_step_test": metrics["zero_step"]["test"],
        "test": shrunk["test"],
        **({"deployed": report["deployed"]} if "deployed" in report else {}),
        "heads_kept": report["choice"]["heads_kept"],
        "neurons_kept": report["choice"]["neurons_kept"],
        "layers_dropped": report["choice"]["layers_dropped"],
        "parameters": report["parameters"],
        "shrink_seconds": report["shrink_seconds"],
        "wall_seconds": time.perf_counter() - start,
        "latency_table": {k: v for k, v in report["target"].items() if k != "table"},
        "environment": report["measured"]["environment"],
    }


def _table(results: dict[str, Any]) -> str:
    lines = [
        "| task | runtime, batch | requested | measured (min-max) | predicted | searches | distill steps | "
        "test acc (dense) | change | in runtime | shrink s | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in results["cells"].values():
        s, acc, dense = cell["settings"], cell["test"]["accuracy"], cell["dense_test"]["accuracy"]
        low, high = cell["measured_range"]
        task = _task(cell)
        lr = s.get("distill_learning_rate", 5e-5)  # the default before it became 1e-4
        steps = f"{s['distill_steps']}" + (f" (lr {lr:g})" if s["distill_steps"] else "")
        lines.append(
            f"| {task} | {s['runtime']}, {s['batch_size']} | "
            f"{cell['requested_speedup']:g}x | {cell['measured_speedup']:.2f}x ({low:.2f}-{high:.2f}) | "
            f"{cell['predicted_speedup']:.2f}x | {_searches(cell)} | {steps} | "
            f"{acc:.1%} ({dense:.1%}) | "
            f"{100 * (acc - dense):+.1f} pt | {_in_runtime(cell)} | "
            f"{cell['shrink_seconds']:.0f} | {cell['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _searches(cell: dict[str, Any]) -> str:
    """How many searches the speed loop ran; ‡ where it ran before it kept the closest attempt."""
    attempts = cell.get("attempts", [])
    old_loop = len(attempts) > 1 and not any("kept" in a for a in attempts)
    return f"{cell.get('searches', 1)}{' ‡' if old_loop else ''}"


def _in_runtime(cell: dict[str, Any]) -> str:
    """The result's test accuracy as its runtime predicts (int8, bf16), and its change against dense."""
    if cell["settings"]["runtime"] == "torch":
        return "(fp32)"
    deployed = cell.get("deployed")
    if deployed is None:
        return "not scored"
    acc = deployed["metrics"]["accuracy"]
    return f"{acc:.1%} ({100 * (acc - cell['dense_test']['accuracy']):+.1f} pt)"


def _task(cell: dict[str, Any]) -> str:
    """The task a cell ran on: its name up to `-RUNTIME-bBATCH`."""
    return str(cell["name"].split(f"-{cell['settings']['runtime']}-b")[0])


def _config(cell: dict[str, Any], **extra: Any) -> ShrinkConfig:
    """The options of the cell's shrink that bench and score its saved model again."""
    s = cell["settings"]
    return ShrinkConfig(
        task=_task(cell), speedup=s["speedup"], runtime=s["runtime"], batch_size=s["batch_size"], **extra
    )


def _score(cell: dict[str, Any], runs: Path) -> None:
    """Score the cell's saved model on the test split in its runtime (cells from before shrink did)."""
    cfg = _config(cell)
    cell["deployed"] = score_deployed(runs / cell["name"] / "model", cfg.load(cfg.seed), cfg, threads=1)


def _rebench(cell: dict[str, Any], runs: Path, rounds: int) -> None:
    """Measure the cell's saved model against dense again (one thread) and update its speed-up."""
    cfg = _config(cell, bench_rounds=rounds)
    measured = bench_shrunk(cell["settings"]["model"], runs / cell["name"] / "model", cfg, threads=1)
    cell.setdefault("measured_in_run", [cell["measured_speedup"], *cell["measured_range"]])
    cell["measured_speedup"], cell["measured_range"] = measured["speedup"], measured["speedup_range"]
    cell["rebench"] = {"rounds": rounds, "environment": measured["environment"]}


def main() -> None:
    args = _args()
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {"cells": {}}
    if args.table:
        print(_table(results))
        return
    chosen = [c for c in results["cells"].values() if args.only is None or c["name"] in args.only]
    if args.score:
        for cell in chosen:
            if cell["settings"]["runtime"] != "torch" and "deployed" not in cell:
                _score(cell, args.runs)
                write_json(args.output, results)
        print(_table(results), flush=True)
        return
    if args.rebench:
        for cell in chosen:
            _rebench(cell, args.runs, args.rounds)
            write_json(args.output, results)
        print(_table(results), flush=True)
        return
    model = _dense(args)
    results["machine"] = {"cpu": cpu_name(), "cpu_features": cpu_features()}
    for steps in args.distill_steps:
        for speedup in args.speedups:
            name = _name(args, speedup, steps)
            done = results["cells"].get(name)
            if (
                done
                and not args.redo
                and done["settings"]["calibration"] == args.calibration
                and done["settings"]["model"] == model
                and done["settings"].get("tune") == "weights"
                and done["settings"].get("scores") == "block"
                and done["settings"].get("speed_retries")
                == ShrinkConfig.model_fields["speed_retries"].default
            ):
                continue
            results["cells"][name] = _cell(args, model, speedup, steps)
            write_json(args.output, results)
            print(_table(results), flush=True)


if __name__ == "__main__":
    main()
