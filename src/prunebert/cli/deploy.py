"""The deployment commands of `prunebert`: compress | decompress | export | bench (parsers and dispatch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prunebert.cli.train import Command
from prunebert.deploy.bench import BenchSettings
from prunebert.deploy.export import ExportOptions
from prunebert.recipes import add_field_option, config_from_args

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


#: a command's options that set fields of its settings model: flag -> (dotted field, argparse extras)
Options = dict[str, tuple[str, dict[str, Any]]]

_EXPORT_OPTIONS: Options = {
    "--format": ("format", {}),
    "--int8": ("int8", {"action": "store_const", "const": True}),
    "--calibration": ("calibration", {"metavar": "TASK"}),
    "--calibration-examples": ("calibration_examples", {}),
    "--ignore-qat": (
        "qat_scales",
        {
            "action": "store_const",
            "const": False,
            "help": "quantize a QAT model as any other (calibrated or dynamic), not with its trained input "
            "ranges",
        },
    ),
    "--eval-split": ("eval_split", {}),
    "--eval-examples": ("eval_examples", {}),
    "--max-length": ("max_length", {}),
    "--opset": ("opset", {}),
}

_BENCH_OPTIONS: Options = {
    "--baseline": ("baseline", {"metavar": "MODEL"}),
    "--variants": ("variants", {"type": _names, "metavar": "VARIANT,..."}),
    "--batch-sizes": ("batch_sizes", {"type": _ints, "metavar": "B,..."}),
    "--seq-len": ("seq_len", {}),
    "--rounds": ("rounds", {}),
    "--iters": ("iters", {}),
    "--warmup": ("warmup", {}),
    "--threads": ("threads", {}),
    "--disturbance": ("disturbance", {}),
    "--csr-threshold": ("csr.threshold", {}),
    "--csr-min-sparsity": ("csr.min_sparsity", {}),
    "--calibration": ("calibration", {"metavar": "TASK"}),
    "--openvino-precision": ("openvino_precision", {}),
    "--openvino-sparse-rate": ("openvino_sparse_rate", {}),
    "--seed": ("seed", {}),
}


def _add_options(parser: argparse.ArgumentParser, cls: type[BaseModel], options: Options) -> None:
    """`options` on `parser`, each with its field's description and default as help."""
    for flag, (dotted, extra) in options.items():
        add_field_option(parser, cls, dotted, flag, **extra)


def _flags(options: Options) -> dict[str, str]:
    """Dotted field -> the option that sets it (what a bad value's error names)."""
    return {dotted: flag for flag, (dotted, _) in options.items()}


def _add_export(sub: Any) -> None:
    export = sub.add_parser("export", help="export to ONNX or OpenVINO (optionally int8), checked vs PyTorch")
    export.add_argument("model", help=ExportOptions.model_fields["model"].description)
    export.add_argument("out", help=ExportOptions.model_fields["out"].description)
    _add_options(export, ExportOptions, _EXPORT_OPTIONS)
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    export.add_argument("--verbose", action="store_true", help="show the export child process's log")
    export.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="latency ratios to a dense baseline measured in one run")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="models to time")
    _add_options(bench, BenchSettings, _BENCH_OPTIONS)
    bench.add_argument("--json-out", type=Path, help="write the full results JSON here")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _bench(args: argparse.Namespace) -> None:
    from prunebert.deploy.bench import format_bench, run_bench
    from prunebert.io import write_json

    settings = config_from_args(BenchSettings, args, _flags(_BENCH_OPTIONS))
    result = run_bench(list(args.models), settings)
    if args.json_out is not None:
        write_json(args.json_out, result)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))


def _export(args: argparse.Namespace) -> None:
    from prunebert.deploy.export import export_model, format_export

    flags = _flags(_EXPORT_OPTIONS)
    options = config_from_args(ExportOptions, args, flags, model=args.model, out=args.out)
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
