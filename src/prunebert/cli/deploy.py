"""The deployment commands of `prunebert`: compress | decompress | export | bench (parsers and dispatch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunebert.cli.train import Command

__all__ = ["COMMANDS"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_compress(sub: Any) -> None:
    compress = sub.add_parser("compress", help="store a sparse model compactly (bitmask + packed values)")
    compress.add_argument("src", help="model directory (save_pretrained) or prunebert run directory")
    compress.add_argument("out", help="directory to write")
    compress.add_argument("--fp16", action="store_true", help="store float32 as float16 (lossy, ~half size)")
    compress.add_argument(
        "--canonical-zeros", action="store_true", help="store -0.0 as +0.0 (equal values, different bits)"
    )
    compress.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    compress.add_argument("--json", action="store_true", help="print the size report as JSON")


def _add_decompress(sub: Any) -> None:
    decompress = sub.add_parser("decompress", help="rebuild the plain safetensors model from `compress`")
    decompress.add_argument("src", help="directory written by prunebert compress")
    decompress.add_argument("out", help="directory to write")
    decompress.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")


def _add_export(sub: Any) -> None:
    export = sub.add_parser("export", help="export to ONNX or OpenVINO (optionally int8), checked vs PyTorch")
    export.add_argument("model", help="built-in name, model directory or prunebert run directory")
    export.add_argument("out", help="directory to write")
    export.add_argument("--format", choices=("onnx", "openvino"), default="onnx")
    export.add_argument("--int8", action="store_true", help="also write an int8 model")
    export.add_argument("--calibration", metavar="TASK", help="calibrate int8 on TASK and measure accuracy")
    export.add_argument(
        "--calibration-examples", type=int, default=300, help="training examples to calibrate on"
    )
    export.add_argument(
        "--ignore-qat",
        action="store_true",
        help="quantize a QAT model as any other (calibrated or dynamic), not with its trained input ranges",
    )
    export.add_argument("--eval-split", default="test", choices=("train", "dev", "test"))
    export.add_argument("--eval-examples", type=int, default=1000, help="examples to measure accuracy on")
    export.add_argument("--max-length", type=int, default=128, help="tokens per calibration/eval example")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    export.add_argument("--verbose", action="store_true", help="show the export child process's log")
    export.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="latency ratios to a dense baseline measured in one run")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="models to time")
    bench.add_argument(
        "--baseline", help="dense model whose torch fp32 latency is 1.0 (default: first MODEL)"
    )
    bench.add_argument(
        "--variants",
        type=_names,
        default=None,
        help="comma-separated: torch, torch-bf16, torch-int8, torch-csr, torch-csr+int8, onnxruntime, "
        "onnxruntime-int8, openvino, openvino-int8 (default: torch,onnxruntime,openvino where installed)",
    )
    bench.add_argument("--batch-sizes", type=_ints, default=(1, 8), help="comma-separated (default 1,8)")
    bench.add_argument("--seq-len", type=int, default=128)
    bench.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    bench.add_argument("--iters", type=int, default=10, help="timed calls per runner per round")
    bench.add_argument("--warmup", type=int, default=2, help="untimed calls per runner before round 1")
    bench.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    bench.add_argument(
        "--disturbance", type=float, default=0.2, help="discard rounds whose baseline strays more"
    )
    bench.add_argument(
        "--csr-threshold", type=float, default=1.1, help="swap a layer to CSR if this much faster"
    )
    bench.add_argument("--csr-min-sparsity", type=float, default=0.5, help="only probe layers this sparse")
    bench.add_argument(
        "--calibration", metavar="TASK", help="calibrate int8 exports on TASK (else data-free)"
    )
    bench.add_argument("--openvino-precision", choices=("f32", "bf16"), default="f32")
    bench.add_argument(
        "--openvino-sparse-rate", type=float, default=None, help="OpenVINO sparse int8 kernels"
    )
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json-out", type=Path, help="write the full results JSON here")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _bench(args: argparse.Namespace) -> None:
    from prunebert.deploy.bench import BenchSettings, format_bench, run_bench
    from prunebert.deploy.torch_variants import CSRSettings
    from prunebert.io import write_json

    settings = BenchSettings(
        variants=args.variants,
        baseline=args.baseline,
        batch_sizes=args.batch_sizes,
        seq_len=args.seq_len,
        rounds=args.rounds,
        iters=args.iters,
        warmup=args.warmup,
        threads=args.threads,
        disturbance=args.disturbance,
        csr=CSRSettings(threshold=args.csr_threshold, min_sparsity=args.csr_min_sparsity),
        calibration=args.calibration,
        openvino_precision=args.openvino_precision,
        openvino_sparse_rate=args.openvino_sparse_rate,
        seed=args.seed,
    )
    result = run_bench(list(args.models), settings)
    if args.json_out is not None:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))


def _export(args: argparse.Namespace) -> None:
    from prunebert.deploy.export import ExportOptions, export_model, format_export

    options = ExportOptions(
        model=args.model,
        out=args.out,
        format=args.format,
        int8=args.int8,
        calibration=args.calibration,
        calibration_examples=args.calibration_examples,
        eval_split=args.eval_split,
        eval_examples=args.eval_examples,
        max_length=args.max_length,
        opset=args.opset,
        qat_scales=not args.ignore_qat,
    )
    manifest = export_model(options, overwrite=args.overwrite, quiet=not args.verbose)
    print(json.dumps(manifest, indent=2) if args.json else format_export(manifest))


def _compress(args: argparse.Namespace) -> None:
    from prunebert.deploy.storage import compress_model, format_report

    report = compress_model(Path(args.src), Path(args.out), args.fp16, args.canonical_zeros, args.overwrite)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def _decompress(args: argparse.Namespace) -> None:
    from prunebert.deploy.storage import decompress_model

    result = decompress_model(Path(args.src), Path(args.out), args.overwrite)
    print(f"decompressed {result['input']} -> {result['output']} ({', '.join(result['files'])})")


#: command -> (add its parser to the subcommands, run it)
COMMANDS: dict[str, Command] = {
    "compress": (_add_compress, _compress),
    "decompress": (_add_decompress, _decompress),
    "export": (_add_export, _export),
    "bench": (_add_bench, _bench),
}
