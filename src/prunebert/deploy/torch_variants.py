"""Faster eager-PyTorch forms of one model: CSR Linears, int8 dynamic quantization, bf16, and their mixes.

A variant is a `+`-joined name: `fp32` (as loaded), `bf16` (all weights and activations bfloat16),
`int8` (`torch.ao.quantization.quantize_dynamic`: int8 weights, activations quantized per batch, fp32
accumulate), `csr` (CSR Linears where measured faster, see `prunebert.deploy.sparse_linear`), `csr+int8` (CSR
where faster than the layer's int8 twin, int8 for the remaining Linears). Each works on whatever Linears
the model has, so they combine with slimmed (structurally smaller) models unchanged. CSR has no bf16
kernel: `csr+bf16` is refused.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ConfigDict, Field
from torch import nn

from prunebert.deploy.sparse_linear import probes_as_dicts, swap_csr_linears
from prunebert.errors import PrunebertError
from prunebert.recipes import StrictModel

__all__ = ["TORCH_VARIANTS", "CSRSettings", "parse_variant", "prepare_torch_variant", "quantize_int8"]

TORCH_VARIANTS = ("fp32", "bf16", "int8", "csr", "csr+int8")


class CSRSettings(StrictModel):
    """How `csr` variants pick layers: swap where dense/CSR time >= threshold, probing layers this sparse."""

    model_config = ConfigDict(frozen=True)

    threshold: float = Field(1.1, gt=0, description="swap a layer to CSR if it is this many times faster")
    min_sparsity: float = Field(0.5, ge=0, le=1, description="only probe layers at least this sparse")
    repeats: int = Field(5, ge=1, description="timed calls per layer and kernel when probing")
    force: bool = Field(False, description="swap every probed layer without timing (tests)")


def parse_variant(name: str) -> tuple[bool, str]:
    """`"csr+int8"` -> (use CSR, precision "int8"); unknown or impossible mixes are one-line errors."""
    parts = set(name.split("+"))
    precisions = parts & {"fp32", "bf16", "int8"}
    unknown = parts - {"csr", "fp32", "bf16", "int8"}
    if unknown or len(precisions) > 1 or not parts:
        raise PrunebertError(f"unknown torch variant {name!r}; choose from {', '.join(TORCH_VARIANTS)}")
    precision = next(iter(precisions), "fp32")
    if "csr" in parts and precision == "bf16":
        raise PrunebertError("torch has no bf16 CSR kernel on CPU; use csr, csr+int8 or bf16 alone")
    return "csr" in parts, precision


def quantize_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantization of every `nn.Linear`, in place (pass a copy to keep the fp32 model)."""
    quantization = getattr(torch.ao, "quantization", None)
    quantize_dynamic = getattr(quantization, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise PrunebertError(
            "this torch has no torch.ao.quantization.quantize_dynamic; use the ONNX Runtime or OpenVINO int8 "
            "export (prunebert export --int8) instead"
        )
    with warnings.catch_warnings():  # deprecated in favour of torchao, still the built-in CPU path in 2.13
        warnings.simplefilter("ignore")
        # in place: a copying quantize_dynamic would deepcopy CSR buffers, which torch cannot
        quantized: nn.Module = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return quantized


def _int8_twin(linear: nn.Linear) -> nn.Module:
    """The int8 dynamic-quantized copy of one Linear: what `csr+int8` runs where CSR is not faster."""
    return quantize_int8(nn.Sequential(copy.deepcopy(linear))).get_submodule("0")


@dataclass
class PreparedVariant:
    """A variant's module and what was done to make it (CSR probes, precision)."""

    module: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


def prepare_torch_variant(
    module: nn.Module, variant: str, tokens: int, csr: CSRSettings | None = None
) -> PreparedVariant:
    """A copy of `module` made into `variant`; CSR layers are timed on `tokens` (batch x seq) rows."""
    use_csr, precision = parse_variant(variant)
    model = copy.deepcopy(module).eval()
    info: dict[str, Any] = {"variant": variant, "precision": precision}
    if use_csr:
        settings = csr or CSRSettings()
        # a layer left out of CSR runs in `precision`: CSR must beat that, not fp32
        against = _int8_twin if precision == "int8" else None
        probes = swap_csr_linears(
            model,
            tokens,
            settings.threshold,
            settings.min_sparsity,
            settings.repeats,
            settings.force,
            against,
        )
        info["csr"] = {
            "threshold": settings.threshold,
            "against": precision,
            "swapped": sum(p.swapped for p in probes),
            "probed": len(probes),
            "layers": probes_as_dicts(probes),
        }
    if precision == "int8":
        model = quantize_int8(model)
    elif precision == "bf16":
        model = model.to(torch.bfloat16)
    return PreparedVariant(model, info)
