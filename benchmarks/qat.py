"""Quantization-aware training against post-training int8, in ONNX Runtime (issue 18 item 3).

From the fine-tuned dense minilm-l6 (rotten-tomatoes, whole training split): a short QAT fine-tune
(`--quantization.qat int8`, fake quantization from the first step, since there are no masks to settle),
exported with its trained input ranges; and post-training static U8S8 int8 of the starting fp32 model,
calibrated on 300 training examples. Both exports score fp32 and int8 on the whole test split.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/qat.py          # ~30 min on one core
    .venv/bin/python benchmarks/qat.py --epochs 0.25 --lr 1e-5               # shorter
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from prunebert.deploy.export import ExportOptions, export_model
from prunebert.quantization.qat import QuantizationConfig
from prunebert.stages.common import TrainConfig
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse
from results_table import write_results  # benchmarks/results_table.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent
TASK = "rotten-tomatoes"


def _export(model: str, out: Path, qat_scales: bool) -> dict[str, Any]:
    """int8 ONNX of `model` scored on the whole test split; the manifest's accuracies and int8 method."""
    options = ExportOptions(
        model=model, out=str(out), int8=True, calibration=TASK, eval_examples=None, qat_scales=qat_scales
    )
    manifest = export_model(options, overwrite=True)
    scores = manifest["accuracy"]["scores"]
    return {
        "int8_method": manifest["int8"]["method"],
        "examples": manifest["accuracy"]["examples"],
        **{f"{name}_accuracy": values["accuracy"] for name, values in scores.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="/work/runs/dense-rotten-tomatoes-s0", help="fine-tuned fp32 run")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "qat")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "qat.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    qat = FinetuneConfig(
        model=args.model,
        task=TASK,
        output_dir=args.runs / "qat-int8",
        train=TrainConfig(epochs=args.epochs, learning_rate=args.lr, warmup_ratio=0.0),
        quantization=QuantizationConfig(qat="int8", start_fraction=0.0),
    )
    trained = run_or_reuse(qat)
    rows = [
        {
            "arm": "post-training int8",
            "model": args.model,
            **_export(args.model, args.runs / "ptq-onnx", False),
        },
        {
            "arm": "qat int8",
            "model": str(qat.output_dir),
            "simulated_int8_test_accuracy": trained["metrics"]["test"]["accuracy"],
            "train_steps": trained["train"]["steps"],
            **_export(str(qat.output_dir), args.runs / "qat-onnx", True),
        },
    ]
    settings = {"task": TASK, "epochs": args.epochs, "learning_rate": args.lr, "threads": args.threads}
    write_results(args.output, "qat", settings, rows, True, started)
    for row in rows:
        print(row["arm"], {k: v for k, v in row.items() if k.endswith("accuracy")})


if __name__ == "__main__":
    main()
