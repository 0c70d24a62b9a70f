"""Quantization-aware training against post-training int8, in ONNX Runtime and OpenVINO (issue 18 item 3).

For each point (a fine-tuned fp32 model: dense, unstructured sparse, slimmed): a short QAT fine-tune
(`--quantization.qat int8`, fake quantization from the first step; the point's own masks stay fixed;
distilled from the point itself in fp32, so QAT learns to reproduce the fp32 model's outputs in int8),
exported with its trained input ranges to ONNX (QDQ) and to OpenVINO (the same QDQ converted); and
post-training static int8 of the starting fp32 model (ONNX Runtime U8S8 / NNCF), calibrated on 300
training examples. Every export scores on the whole test split; the deltas are against the starting
model in fp32 scored on the same examples.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/qat.py --task rotten-tomatoes \\
        --point dense=/work/runs/grid/rotten-tomatoes/dense-0-s0 \\
        --point gmp90=/work/runs/grid/rotten-tomatoes/gmp-90-s0 \\
        --point shrink2.5x=/work/runs/shrink/rotten-tomatoes-torch-b1-x2.5-d250-lr0.0001/model
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from prunebert.deploy.export import ExportOptions, export_model
from prunebert.quantization.qat import QuantizationConfig
from prunebert.stages.common import TrainConfig
from prunebert.stages.distill import DistillConfig
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse
from results_table import write_results  # benchmarks/results_table.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}


def _export(model: str, out: Path, fmt: str, task: str, qat_scales: bool) -> dict[str, Any]:
    """Int8 export of `model` scored on the whole test split: fp32 and int8 accuracy, int8 method."""
    options = ExportOptions(
        model=model,
        out=str(out),
        format=fmt,  # type: ignore[arg-type]
        int8=True,
        calibration=task,
        eval_examples=None,
        qat_scales=qat_scales,
    )
    done = out / "prunebert_export.json"
    manifest = json.loads(done.read_text()) if done.is_file() else {}
    if manifest.get("options") != options.model_dump(mode="json"):  # not this export: make it
        manifest = export_model(options, overwrite=True)
    accuracy = manifest["accuracy"]
    scores = {name: values[accuracy["metric_key"]] for name, values in accuracy["scores"].items()}
    return {
        "int8_method": manifest["int8"]["method"],
        "examples": accuracy["examples"],
        "torch_fp32": scores["torch_fp32"],
        "int8": scores[f"{fmt}_int8"],
    }


def _qat(point: str, model: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """QAT fine-tune of `model` (masks kept fixed, distilled from itself); its output dir and results."""
    config = FinetuneConfig(
        model=model,
        task=args.task,
        output_dir=args.runs / args.task / point / f"qat-int8{args.tag}",
        seed=args.seed,
        train=TrainConfig(epochs=args.epochs, learning_rate=args.lr, warmup_ratio=0.0),
        quantization=QuantizationConfig(qat="int8", start_fraction=0.0, fp32_linears=args.fp32_linears),
        distill=DistillConfig(teacher=model, temperature=2.0, alpha_soft=1.0, alpha_hard=0.0)
        if args.self_distill
        else None,
    )
    return str(config.output_dir), run_or_reuse(config)


def _table(paths: list[Path]) -> str:
    """One Markdown row per point, runtime and arm of the given results files."""
    lines = [
        "| point | runtime | arm | fp32 Linears | fp32 acc | int8 acc | change |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for path in paths:
        for row in json.loads(path.read_text())["cells"]:
            kept = f"`{row['fp32_linears']}`" if row.get("fp32_linears") else "none"
            if row["arm"] != "qat int8":
                kept = "the engine's choice"
            accuracy = f"{100 * row['fp32_accuracy']:.1f}% | {100 * row['int8_accuracy']:.1f}%"
            cells = [
                row["point"],
                row["runtime"],
                row["arm"],
                kept,
                accuracy,
                f"{row['delta_points']:+.2f} pt",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--task", default="rotten-tomatoes")
    parser.add_argument(
        "--point", action="append", default=[], metavar="NAME=MODEL", help="a fine-tuned fp32 model"
    )
    parser.add_argument("--formats", nargs="+", default=["onnx", "openvino"], choices=list(RUNTIMES))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "qat")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-self-distill", dest="self_distill", action="store_false", help="QAT on the labels alone"
    )
    parser.add_argument(
        "--fp32-linears",
        help=r"regex of Linears kept in fp32 (mixed precision), e.g. 'layer\.\d+\.output\.dense$'",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, help="default: benchmarks/results/qat_TASK.json")
    parser.add_argument("--table", nargs="+", type=Path, help="print the Markdown table of these results")
    args = parser.parse_args()
    if args.table:
        print(_table(args.table))
        return
    bad = [spec for spec in args.point if not all(spec.partition("=")[::2])]
    if not args.point or bad:
        parser.error(f"give each point as --point NAME=MODEL (got {bad or 'none'})")
    args.tag = "-fp32-" + re.sub(r"[^A-Za-z0-9]+", "", args.fp32_linears) if args.fp32_linears else ""
    args.output = args.output or ROOT / "results" / f"qat_{args.task}{'_mixed' if args.tag else ''}.json"
    torch.set_num_threads(args.threads)
    started = time.time()
    rows: list[dict[str, Any]] = []
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    for spec in args.point:
        point, _, model = spec.partition("=")
        qat_dir, trained = _qat(point, model, args)
        for fmt in args.formats:
            out = args.runs / args.task / point
            ptq = _export(model, out / f"ptq-{fmt}", fmt, args.task, False)
            qat = _export(qat_dir, out / f"qat-{fmt}{args.tag}", fmt, args.task, True)
            for arm, found in (("post-training int8", ptq), ("qat int8", qat)):
                row = {
                    "point": point,
                    "model": model,
                    "runtime": f"{RUNTIMES[fmt]}-int8",
                    "fp32_linears": args.fp32_linears if arm == "qat int8" else None,
                    "arm": arm,
                    "fp32_accuracy": ptq["torch_fp32"],  # the starting model, on the same examples
                    "int8_accuracy": found["int8"],
                    "delta_points": 100 * (found["int8"] - ptq["torch_fp32"]),
                    "examples": found["examples"],
                    "int8_method": found["int8_method"],
                }
                if arm == "qat int8":
                    row.update(
                        qat_model=qat_dir,
                        qat_fp32_accuracy=found["torch_fp32"],
                        simulated_int8_test_accuracy=trained["metrics"]["test"]["accuracy"],
                        train_steps=trained["train"]["steps"],
                    )
                rows.append(row)
                print(f"{point:<12} {row['runtime']:<18} {arm:<20} {row['delta_points']:+.2f} pt", flush=True)
            write_results(args.output, "qat", settings, rows, False, started)
    write_results(args.output, "qat", settings, rows, True, started)


if __name__ == "__main__":
    main()
