"""Inference runtimes behind one signature: named int64 arrays in, a float32 array out.

torch eager (any variant from `prunebert.deploy.torch_variants`), ONNX Runtime (an exported `.onnx`) and
OpenVINO (an exported IR `.xml`). The optional runtimes are imported only when used; a missing one is a
one-line error naming the extra that installs it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from prunebert.deploy.inference import as_numpy
from prunebert.errors import PrunebertError

if TYPE_CHECKING:
    from onnxruntime.quantization import CalibrationDataReader

__all__ = [
    "EXTRAS",
    "Runner",
    "available",
    "calibration_reader",
    "onnxruntime_runner",
    "openvino_runner",
    "require",
    "torch_runner",
]

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

#: importable module -> the pip extra of prunebert that installs it
EXTRAS = {
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "openvino": "openvino",
    "nncf": "openvino",
}


def available(module: str) -> bool:
    """Whether `module` can be imported here (without importing it)."""
    return importlib.util.find_spec(module) is not None


def require(*modules: str) -> None:
    """A one-line error naming the extra to install if any of `modules` is missing."""
    missing = [m for m in modules if not available(m)]
    if missing:
        extras = sorted({EXTRAS.get(m, m) for m in missing})
        raise PrunebertError(
            f"{', '.join(missing)} not installed; run `pip install 'prunebert[{','.join(extras)}]'` "
            f"(or `pip install {' '.join(missing)}`)"
        )


def torch_runner(module: nn.Module, input_names: tuple[str, ...]) -> Runner:
    """Call an eager `TokenModel`-shaped module under inference mode."""

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return as_numpy(module(*(torch.from_numpy(inputs[n]) for n in input_names)))

    return run


def calibration_reader(batches: Iterable[dict[str, np.ndarray]]) -> CalibrationDataReader:
    """An ONNX Runtime `CalibrationDataReader` that hands out `batches`, each once."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader()


def onnxruntime_runner(path: Path, threads: int) -> Runner:
    """An ONNX Runtime CPU session on `threads` intra-op threads (inter-op 1, sequential execution)."""
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run(None, {n: inputs[n] for n in names})[0], np.float32)

    return run


def openvino_runner(
    path: Path, threads: int, precision: str = "f32", sparse_rate: float | None = None
) -> Runner:
    """An OpenVINO CPU model compiled for latency on `threads` threads.

    `precision` is the inference precision hint: "f32", or "bf16" (OpenVINO's own default on CPUs with
    bf16 support, which is why it is set explicitly). `sparse_rate` turns on OpenVINO's sparse-weight
    kernels for int8 layers at least that sparse (CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE; AMX CPUs).
    """
    require("openvino")
    import openvino as ov

    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    }
    if sparse_rate is not None:
        config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = sparse_rate
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    output = compiled.outputs[0]

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        result = request.infer({n: inputs[n] for n in names})
        return np.asarray(result[output], np.float32)

    return run
