"""The child process of `prunebert.deploy.export`: export, quantize, check, score, then move OUT in place.

Run as `python -m prunebert.deploy.export_worker '<ExportOptions as JSON>'`; a PrunebertError is printed as
`prunebert: error: ...` on stderr with exit status 2, which the parent re-raises.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunebert.deploy.export import EXPORT_FILE, FILES, ExportOptions, needs
from prunebert.deploy.inference import (
    InferenceModel,
    TaskBatches,
    example_inputs,
    load_inference_model,
    task_batches,
)
from prunebert.deploy.qat_export import qat_ranges, quantize_onnx_qat
from prunebert.deploy.runtimes import (
    Runner,
    calibration_reader,
    onnxruntime_runner,
    openvino_runner,
    require,
    torch_runner,
)
from prunebert.errors import PrunebertError
from prunebert.hardware import versions
from prunebert.io import move_into_place, write_json
from prunebert.metrics import compute_metrics
from prunebert.transforms.pad_empty import pad_empty_blocks

__all__ = ["check_inputs", "export_onnx", "export_openvino", "main", "openvino_from_onnx", "run_export"]


def check_inputs(model: InferenceModel, seed: int) -> list[dict[str, np.ndarray]]:
    """Two batches of different shapes, the second right-padded, to check dynamic axes and masking."""
    first = example_inputs(model.config, model.input_names, 2, 16, seed)
    second = example_inputs(model.config, model.input_names, 3, 11, seed + 1)
    if "attention_mask" in second:
        second["attention_mask"][1, 7:] = 0
    return [first, second]


def _max_diff(reference: Runner, candidate: Runner, inputs: Sequence[dict[str, np.ndarray]]) -> float:
    return max(float(np.abs(reference(x) - candidate(x)).max()) for x in inputs)


def export_onnx(model: InferenceModel, path: Path, opset: int | None) -> None:
    """`torch.onnx.export(dynamo=True)` with dynamic (batch, seq) axes, weights inside the file."""
    example = model.torch_inputs(example_inputs(model.config, model.input_names, 2, 16))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    dynamic = {name: {0: batch, 1: seq} for name in model.input_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model.module,
            example,
            dynamo=True,
            input_names=list(model.input_names),
            output_names=[model.output_name],
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise PrunebertError("torch.onnx.export returned no program; upgrade torch (>= 2.6)")
    import onnx

    proto = program.model_proto
    del proto.graph.value_info[:]  # stale intermediate shapes from tracing break ONNX shape inference
    onnx.save(proto, str(path))


def quantize_onnx(source: Path, target: Path, calibration: TaskBatches | None) -> dict[str, Any]:
    """ONNX Runtime int8: dynamic (data-free), or static QDQ calibrated on `calibration`'s batches."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if calibration is None:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
        return {"method": "onnxruntime dynamic (int8 per-channel weights, int8 activations per batch)"}

    quantize_static(
        str(source),
        str(target),
        calibration_reader(calibration.batches),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        # U8S8, ONNX Runtime's x86 format: asymmetric uint8 activations, symmetric int8 weights. Measured on
        # the fine-tuned minilm-l6 (test accuracy 80.7% in fp32), calibrated in batches of 32: U8S8 80.0%
        # (79.0% in batches of 8, as here) and 1.6x faster than fp32 in ONNX Runtime; symmetric int8
        # activations 76.9%; asymmetric int8 ones 80.1% but slower than fp32.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return {
        "method": "onnxruntime static QDQ U8S8 (per-channel int8 weights, uint8 activations of MatMul/Gemm)"
    }


def export_openvino(model: InferenceModel, path: Path) -> Any:
    """`openvino.convert_model` on the torch module, dynamic (batch, seq), saved uncompressed (fp32).

    Empty blocks of a slimmed model (no head, no neuron left) are first given one zero column
    (`pad_empty_blocks`, in place, same function): OpenVINO mis-converts zero-width tensors.
    """
    import openvino as ov

    pad_empty_blocks(model.module)
    arrays = example_inputs(model.config, model.input_names, 2, 16)
    example = {name: torch.from_numpy(array) for name, array in arrays.items()}
    shapes = [(name, [-1, -1], ov.Type.i64) for name in model.input_names]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model.module, example_input=example, input=shapes)
    converted.outputs[0].get_tensor().set_names({model.output_name})
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return converted


def quantize_openvino(converted: Any, target: Path, calibration: TaskBatches | None) -> dict[str, Any]:
    """NNCF int8: weight-only (data-free), or post-training quantization calibrated on the task."""
    import nncf
    import openvino as ov

    if calibration is None:
        quantized = nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_ASYM)
        method = "nncf.compress_weights INT8_ASYM (weight-only, data-free)"
    else:
        dataset = nncf.Dataset(calibration.batches)
        size = sum(len(b[next(iter(b))]) for b in calibration.batches)
        quantized = nncf.quantize(
            converted, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration.batches)
        )
        method = f"nncf.quantize TRANSFORMER ({size} calibration examples)"
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return {"method": method}


def _runner(fmt: str, path: Path) -> Runner:
    if fmt == "onnx":
        return onnxruntime_runner(path, torch.get_num_threads())
    return openvino_runner(path, torch.get_num_threads(), precision="f32")


def _calibration(options: ExportOptions, model: InferenceModel) -> TaskBatches | None:
    if options.calibration is None:
        return None
    return task_batches(
        options.calibration, model, "train", options.calibration_examples, 8, options.max_length, options.seed
    )


def _accuracy(
    options: ExportOptions, model: InferenceModel, runners: dict[str, Runner]
) -> tuple[dict[str, Any] | None, str | None]:
    """Task metric of every runner on the same examples, or why it was not measured."""
    if options.calibration is None or not options.measure_accuracy:
        return None, "accuracy not measured: pass --calibration TASK to measure it"
    if model.output_name != "logits" or model.new_head:
        return None, "accuracy not measured: the model has no trained classification head"
    data = task_batches(
        options.calibration,
        model,
        options.eval_split,
        options.eval_examples,
        32,
        options.max_length,
        options.seed,
    )
    scores = {}
    for name, run in runners.items():
        predictions = np.concatenate([run(batch) for batch in data.batches])
        scores[name] = compute_metrics(data.metric, predictions, data.labels)
    key = next(iter(scores["torch_fp32"]))
    accuracy = {"split": options.eval_split, "examples": len(data.labels), "metric": data.metric}
    return {**accuracy, "metric_key": key, "scores": scores}, None


def run_export(options: ExportOptions) -> dict[str, Any]:
    """Export, quantize, check and score into a temporary directory, then move it to `options.out`."""
    out = Path(options.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load_inference_model(options.model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; an export is meant to be shared
    try:
        manifest = _export_into(options, model, tmp, out)
        move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _export_fp32(options: ExportOptions, model: InferenceModel, path: Path) -> Any:
    """Write the fp32 model; returns the in-memory OpenVINO model (None for ONNX) for quantization."""
    if options.format == "onnx":
        if options.int8:  # ONNX Runtime's quantizer fails on a zero-size weight (scale of an empty channel)
            pad_empty_blocks(model.module)
        export_onnx(model, path, options.opset)
        return None
    return export_openvino(model, path)


def _quantize(
    options: ExportOptions, model: InferenceModel, fp32_path: Path, converted: Any
) -> dict[str, Any]:
    """Write the int8 model beside the fp32 one; returns what was done.

    A model trained with QAT (`prunebert_qat.json` beside its weights) gets its trained input ranges, no
    calibration: in ONNX as QDQ pairs, and in OpenVINO by converting that same QDQ ONNX (OpenVINO turns
    each QuantizeLinear / DequantizeLinear pair into a FakeQuantize and runs the Linears in int8).
    """
    int8_path = fp32_path.parent / FILES[(options.format, True)]
    qat = qat_ranges(model.path) if options.qat_scales else None
    if qat is not None:
        if options.format == "onnx":
            return _quantize_qat(model, options, fp32_path, int8_path, qat)
        require(*needs("onnx", int8=True))  # the QDQ ONNX is made first, then converted
        with tempfile.TemporaryDirectory(prefix="prunebert-qat-") as scratch:
            onnx_fp32, qdq = Path(scratch) / "model.onnx", Path(scratch) / "model.int8.onnx"
            export_onnx(model, onnx_fp32, options.opset)
            done = _quantize_qat(model, options, onnx_fp32, qdq, qat)
            openvino_from_onnx(qdq, int8_path, model.output_name)
        return {**done, "method": f"OpenVINO IR converted from the {done['method']}"}
    calibration = _calibration(options, model)
    with _scratch_cwd():
        if options.format == "onnx":
            return quantize_onnx(fp32_path, int8_path, calibration)
        return quantize_openvino(converted, int8_path, calibration)


def _quantize_qat(
    model: InferenceModel, options: ExportOptions, source: Path, target: Path, qat: dict[str, Any]
) -> dict[str, Any]:
    prefix = str(getattr(model.module.model, "base_model_prefix", ""))
    with _scratch_cwd():  # ORT's calibration pass still runs: two small batches feed it
        return quantize_onnx_qat(source, target, qat, prefix, check_inputs(model, options.seed))


def openvino_from_onnx(source: Path, target: Path, output_name: str) -> None:
    """`openvino.convert_model` of an ONNX file (a QDQ one keeps its int8 scales), saved uncompressed."""
    import openvino as ov

    converted = ov.convert_model(str(source))
    converted.outputs[0].get_tensor().set_names({output_name})
    ov.save_model(converted, str(target), compress_to_fp16=False)


def _export_into(options: ExportOptions, model: InferenceModel, tmp: Path, out: Path) -> dict[str, Any]:
    model.config.save_pretrained(tmp)
    model.tokenizer.save_pretrained(tmp)
    fp32_path = tmp / FILES[(options.format, False)]
    converted = _export_fp32(options, model, fp32_path)
    inputs = check_inputs(model, options.seed)
    reference = torch_runner(model.module, model.input_names)
    runners = {"torch_fp32": reference, f"{options.format}_fp32": _runner(options.format, fp32_path)}
    diff = _max_diff(reference, runners[f"{options.format}_fp32"], inputs)
    if not diff <= options.tolerance:
        raise PrunebertError(
            f"{options.format} outputs differ from PyTorch by {diff:.2e} > {options.tolerance:.0e}; "
            "the export is wrong for this model: report it with the model's config"
        )
    int8 = _quantize(options, model, fp32_path, converted) if options.int8 else None
    if int8 is not None:
        runners[f"{options.format}_int8"] = _runner(options.format, tmp / FILES[(options.format, True)])
    files = {}
    for (fmt, quantized), name in FILES.items():
        if fmt == options.format and (tmp / name).is_file():
            run = runners[f"{fmt}_{'int8' if quantized else 'fp32'}"]
            precision = "int8" if quantized else "fp32"
            files[name] = {"precision": precision, "max_abs_diff": _max_diff(reference, run, inputs)}
            files[name]["bytes"] = _bytes(tmp / name)
    accuracy, note = _accuracy(options, model, runners)
    shapes = [list(x[model.input_names[0]].shape) for x in inputs]
    manifest = {
        "model": options.model,
        "out": str(out),
        "format": options.format,
        "inputs": list(model.input_names),
        "output": model.output_name,
        "files": files,
        "check": {"max_abs_diff": diff, "tolerance": options.tolerance, "shapes": shapes},
        "int8": int8,
        "calibration": options.calibration,
        "accuracy": accuracy,
        "accuracy_note": note,
        "options": options.model_dump(mode="json"),
        "versions": versions(),
    }
    write_json(tmp / EXPORT_FILE, manifest)
    return manifest


@contextmanager
def _scratch_cwd() -> Iterator[None]:
    """Run in a throw-away working directory: ONNX Runtime's quantizer drops temporary files in the cwd."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="prunebert-quantize-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _bytes(path: Path) -> int:
    """A model file's bytes with its companions: OpenVINO's `.bin` weights, ONNX external data."""
    companions = [path.with_suffix(".bin")] if path.suffix == ".xml" else [Path(f"{path}.data")]
    return sum(p.stat().st_size for p in [path, *companions] if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = ExportOptions.model_validate_json(args[0])
        run_export(options)
    except PrunebertError as exc:
        print(f"prunebert: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
