"""Static int8 ONNX with the input ranges of quantization-aware training instead of calibrated ones.

ONNX Runtime's QDQ quantizer takes per-tensor `TensorQuantOverrides` (scale, zero point); each trained
Linear's input range (`prunebert_qat.json`) becomes the override of the tensor its MatMul / Gemm reads.
Only those nodes are quantized, as in training (the attention score products stay fp32), each with its
own QuantizeLinear / DequantizeLinear pair (`DedicatedQDQPair`: a LayerNorm output feeding query, key,
value and the residual is quantized for the three Linears only, not for the residual), and no output
is quantized (ORT would quantize a Gemm's: the pooler's and the classifier's). Weights are
quantized by ONNX Runtime from the fp32 weights with the formulas `quantization.maths` trains with, and
their scales are left as they are (`QDQDisableWeightAdjustForInt32Bias`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunebert.deploy.runtimes import calibration_reader
from prunebert.errors import PrunebertError
from prunebert.model_files import align_keys
from prunebert.quantization.maths import activation_qparams
from prunebert.quantization.qat import QAT_FILE, read_qat

__all__ = ["input_overrides", "linear_nodes", "qat_ranges", "quantize_onnx_qat"]

_SCOPES = "pkg.torch.onnx.name_scopes"  # the module path of each node, written by torch.onnx (dynamo)


def qat_ranges(model_dir: str) -> dict[str, Any] | None:
    """The QAT record saved beside a model's weights, or None for a model trained without QAT."""
    return read_qat(model_dir) if (Path(model_dir) / QAT_FILE).is_file() else None


def linear_nodes(graph: Any, wrapper_prefix: str = "model.") -> dict[str, Any]:
    """Module name -> the MatMul / Gemm node computing that `nn.Linear` (weight an initializer)."""
    weights = {i.name for i in graph.initializer}
    nodes = {}
    for node in graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in weights or _SCOPES not in meta:
            continue
        if "aten.linear" not in meta.get("pkg.torch.onnx.fx_node", ""):
            continue
        scopes = ast.literal_eval(meta[_SCOPES])  # [..., "the.module.path", "op name"]
        nodes[str(scopes[-2]).removeprefix(wrapper_prefix)] = node
    return nodes


def input_overrides(
    nodes: dict[str, Any], linears: dict[str, Any], base_prefix: str
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """ORT `TensorQuantOverrides` for the inputs of the trained Linears, and the Linears without a range.

    Linears reading one tensor (query, key, value) share its range: the union of theirs, equal to each
    when they were trained together (an EMA of the same batches).
    """
    trained = align_keys(linears, set(nodes), base_prefix)
    ranges: dict[str, tuple[float, float]] = {}
    for module, node in nodes.items():
        if module in trained:
            low, high = float(trained[module]["min"]), float(trained[module]["max"])
            old = ranges.get(node.input[0], (low, high))
            ranges[node.input[0]] = (min(old[0], low), max(old[1], high))
    overrides = {}
    for tensor, (low, high) in ranges.items():
        scale, zero = activation_qparams(torch.tensor(low), torch.tensor(high))
        overrides[tensor] = [
            {"scale": np.array(scale.item(), np.float32), "zero_point": np.array(zero.item(), np.uint8)}
        ]
    return overrides, sorted(m for m in nodes if m not in trained)


def quantize_onnx_qat(
    source: Path,
    target: Path,
    qat: dict[str, Any],
    base_prefix: str,
    batches: Iterable[dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Write `target`: `source` in static QDQ U8S8 with the trained input ranges of `qat`.

    `batches` only feed ONNX Runtime's calibration pass, whose ranges the overrides replace.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    nodes = linear_nodes(onnx.load(str(source)).graph)
    overrides, untrained = input_overrides(nodes, qat["linears"], base_prefix)
    if not overrides:
        raise PrunebertError(
            f"{QAT_FILE} holds no trained range for any Linear of this model (QAT never started?); "
            "export with --ignore-qat to calibrate instead"
        )
    quantized = [node.name for module, node in nodes.items() if module not in untrained]

    quantize_static(
        str(source),
        str(target),
        calibration_reader(batches),
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=quantized,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={
            "TensorQuantOverrides": overrides,
            "DedicatedQDQPair": True,
            "OpTypesToExcludeOutputQuantization": ["Gemm"],  # as trained: a Linear's output stays fp32
            "QDQDisableWeightAdjustForInt32Bias": True,
        },
    )
    return {
        "method": "onnxruntime static QDQ U8S8 with the input ranges of quantization-aware training "
        f"({QAT_FILE}): per-channel int8 weights, uint8 inputs of every trained Linear",
        "qat": {"linears": len(quantized), "tensors": len(overrides), "fp32_linears": untrained},
    }
