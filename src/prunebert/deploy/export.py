"""`prunebert export`: a model to ONNX or OpenVINO IR, optionally int8, checked against PyTorch.

The export itself runs in a child process (`python -m prunebert.deploy.export_worker`): `torch.onnx.export`
was measured to slow every later eager call of the same process by ~35%, which would poison a
benchmark or any serving code that exports first. The child writes into a temporary directory beside
OUT and renames it into place only when everything, the manifest `prunebert_export.json` last, is written.

- ONNX: `torch.onnx.export(dynamo=True)` with dynamic batch and sequence axes; ONNX Runtime's outputs
  must match PyTorch's within `tolerance` (1e-4) on padded inputs of two shapes, or the export fails.
  `--int8`: ONNX Runtime's quantizer, dynamic (data-free) or, with `--calibration TASK`, static QDQ
  (U8S8: per-channel int8 weights, asymmetric uint8 activations of MatMul/Gemm) calibrated on TASK's
  training split. A model fine-tuned with `--quantization.qat int8` gets static QDQ U8S8 with its trained
  input ranges instead (`prunebert.deploy.qat_export`), with or without `--calibration`.
- OpenVINO: `openvino.convert_model` on the torch module (not via ONNX, whose transposes defeat
  OpenVINO's sparse kernels), saved in fp32. `--int8`: NNCF weight-only int8 (data-free) or, with
  `--calibration`, NNCF post-training quantization on TASK's training split.
With `--calibration` and a classifier, the task metric of PyTorch fp32 and of every exported model is
measured on the first `eval_examples` of TASK's `eval_split` and written to the manifest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from prunebert.deploy.inference import refuse_compressed
from prunebert.deploy.runtimes import require
from prunebert.errors import PrunebertError
from prunebert.models import load_config
from prunebert.recipes import StrictModel

__all__ = [
    "EXPORT_FILE",
    "FILES",
    "FORMATS",
    "ExportOptions",
    "Format",
    "export_model",
    "format_export",
    "needs",
]

Format = Literal["onnx", "openvino"]
FORMATS: tuple[str, ...] = typing.get_args(Format)
EXPORT_FILE = "prunebert_export.json"
#: (format, int8) -> the model file inside the export directory
FILES = {
    ("onnx", False): "model.onnx",
    ("onnx", True): "model.int8.onnx",
    ("openvino", False): "openvino_model.xml",
    ("openvino", True): "openvino_model.int8.xml",
}


class ExportOptions(StrictModel):
    """What to export and how; JSON-serialisable so the child process receives exactly this."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="built-in name, model directory or prunebert run directory")
    out: str = Field(description="directory to write")
    format: Format = Field("onnx", description="ONNX (run by ONNX Runtime) or OpenVINO IR")
    int8: bool = Field(False, description="also write an int8 model")
    calibration: str | None = Field(
        None,
        description="task (built-in name, hub name or local file/dir) to calibrate int8 on and measure "
        "accuracy with (null: data-free int8, no accuracy)",
    )
    calibration_examples: int = Field(300, ge=1, description="training examples to calibrate on")
    eval_split: Literal["train", "dev", "test"] = Field("test", description="split to measure accuracy on")
    eval_examples: int | None = Field(
        1000, ge=1, description="examples to measure accuracy on (null: the whole split)"
    )
    measure_accuracy: bool = Field(
        True,
        description="score PyTorch and every exported model on the task (with calibration, a classifier)",
    )
    max_length: int = Field(128, ge=1, description="tokens per calibration/eval example")
    opset: int | None = Field(None, ge=1, description="ONNX opset (null: the exporter's)")
    tolerance: float = Field(1e-4, gt=0, description="largest |difference| from PyTorch the export passes")
    seed: int = Field(0, description="seed of the check inputs and the calibration sample")
    qat_scales: bool = Field(
        True,
        description="a QAT model's int8 ONNX uses its trained input ranges (false: calibrated or dynamic, "
        "as any other model)",
    )

    @model_validator(mode="after")
    def _calibration_needs_int8(self) -> ExportOptions:
        if self.calibration is not None and not self.int8:
            raise ValueError("--calibration only applies to int8; add --int8 or drop --calibration")
        return self

    def needs(self) -> tuple[str, ...]:
        """Modules this export imports."""
        return needs(self.format, self.int8)


def needs(fmt: Format, int8: bool) -> tuple[str, ...]:
    """Modules an export to `fmt` (with an int8 model or not) imports."""
    if fmt == "onnx":
        return ("onnx", "onnxscript", "onnxruntime")
    return ("openvino", "nncf") if int8 else ("openvino",)


def export_model(options: ExportOptions, overwrite: bool = False, quiet: bool = True) -> dict[str, Any]:
    """Export in a child process; returns the manifest it wrote to OUT/prunebert_export.json."""
    require(*options.needs())
    config = load_config(options.model)  # a wrong model is a one-line error here, before a child starts
    refuse_compressed(options.model)
    out = Path(options.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PrunebertError(f"{out} exists and is not empty; pass a new directory or --overwrite")
    command = [sys.executable, "-m", "prunebert.deploy.export_worker", options.model_dump_json()]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, capture_output=quiet, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise PrunebertError(_child_error(proc.stderr or "", proc.returncode))
    manifest = dict(json.loads((out / EXPORT_FILE).read_text()))
    dropped = [a for a in config.architectures or [] if not a.endswith(_EXPORTED_HEADS)]
    if dropped:
        manifest["head_note"] = (
            f"note: {options.model} is a {dropped[0]}; its task head is not exported: the exported model is "
            f"its encoder and outputs {manifest['output']} (export a sequence classifier to keep its head)"
        )
    return manifest


#: architectures whose head the export keeps (a classifier's logits; a bare encoder has none to lose)
_EXPORTED_HEADS = ("ForSequenceClassification", "Model")


def _child_error(stderr: str, code: int) -> str:
    """The child's one-line PrunebertError, or the last line of its traceback."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("prunebert: error: "):
            return line.removeprefix("prunebert: error: ")
    last = lines[-1] if lines else f"exit status {code}"
    return f"export failed in its child process ({last[:200]}); rerun with --verbose to see its log"


def format_export(manifest: dict[str, Any]) -> str:
    """A readable summary of an export manifest."""
    check = manifest["check"]
    lines = [
        f"exported {manifest['model']} -> {manifest['out']} ({manifest['format']})",
        f"inputs {', '.join(manifest['inputs'])} -> {manifest['output']}; dynamic batch and sequence axes",
    ]
    for name, info in manifest["files"].items():
        lines.append(f"  {name}: {info['bytes']:,} bytes, max |diff| vs PyTorch {info['max_abs_diff']:.2e}")
    lines.append(f"fp32 check: max |diff| {check['max_abs_diff']:.2e} <= {check['tolerance']:.0e}")
    accuracy = manifest.get("accuracy")
    if accuracy:
        lines.append(f"{accuracy['metric']} on {accuracy['examples']} {accuracy['split']} examples:")
        for name, scores in accuracy["scores"].items():
            lines.append(f"  {name:<22} {scores[accuracy['metric_key']]:.4f}")
    elif manifest.get("accuracy_note"):
        lines.append(manifest["accuracy_note"])
    if manifest.get("head_note"):
        lines.append(manifest["head_note"])
    return "\n".join(lines)
