"""The int8 arithmetic of quantization-aware training, as pure functions (tensor in, tensor out).

The schemes are ONNX Runtime's static U8S8 ones, computed the way its quantizer computes them
(`onnxruntime.quantization.quant_utils.compute_scale_zp`), so a model trained with them deploys unchanged:

- weights, symmetric int8 per output row: s_r = max_j |W_rj| / 127 (in float64, stored as float32;
  1.0 where that is below float32's `tiny`), q = clamp(round(W / s_r), -127, 127). 0 maps to 0 exactly,
  so pruned weights stay zero.
- activations, asymmetric uint8 per tensor over a range [a, b] widened to hold 0:
  s = (b - a) / 255, z = round(-a / s), q = clamp(round(x / s) + z, 0, 255), x' = (q - z) s.
- training sees x' and W' = q s_r (fake quantization) and back-propagates with the straight-through
  estimator (Bengio et al. 2013), gradient 1 where q was not clamped and 0 where it was, as Q8BERT
  (Zafrir et al. 2019). Rounding is half to even everywhere, as in `QuantizeLinear`.
"""

from __future__ import annotations

import torch

__all__ = [
    "ACTIVATION_RANGE",
    "WEIGHT_RANGE",
    "activation_qparams",
    "dequantize",
    "ema",
    "fake_quantize",
    "fake_quantize_weight",
    "quantize",
    "weight_scales",
]

#: (qmin, qmax) of symmetric int8 weights and of asymmetric uint8 activations
WEIGHT_RANGE = (-127, 127)
ACTIVATION_RANGE = (0, 255)
_TINY = torch.finfo(torch.float32).tiny


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-row symmetric int8 scales of a (out, in) weight, shape (out, 1), float32."""
    absmax = weight.detach().abs().amax(dim=1, keepdim=True).double()
    scale = 2 * absmax / (WEIGHT_RANGE[1] - WEIGHT_RANGE[0])
    return torch.where(scale < _TINY, torch.ones_like(scale), scale).float()


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero point) of asymmetric uint8 over [low, high] widened to hold 0 (0-dim tensors)."""
    low = torch.clamp(low.detach().float(), max=0.0).double()
    high = torch.clamp(high.detach().float(), min=0.0).double()
    scale = (high - low) / (ACTIVATION_RANGE[1] - ACTIVATION_RANGE[0])
    empty = scale < _TINY  # an all-zero range: ONNX Runtime's scale 1, zero point 0
    scale = torch.where(empty, torch.ones_like(scale), scale)
    zero_point = torch.where(empty, torch.zeros_like(low), torch.round(ACTIVATION_RANGE[0] - low / scale))
    return scale.float(), zero_point.float()


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int
) -> torch.Tensor:
    """q = clamp(round(x / scale) + zero_point, qmin, qmax), as floats holding integers."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float) -> torch.Tensor:
    """x' = (q - zero_point) * scale."""
    return (q - zero_point) * scale


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int
) -> torch.Tensor:
    """dequantize(quantize(x)) forward; straight-through gradient, zero where the value was clamped."""
    unclamped = torch.round(x.detach() / scale) + zero_point
    inside = (unclamped >= qmin) & (unclamped <= qmax)  # the clipped STE's pass-through region
    out = dequantize(torch.clamp(unclamped, qmin, qmax), scale, zero_point).to(x.dtype)
    return out + (x - x.detach()) * inside


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in) weight through symmetric per-row int8, straight-through gradient (nothing clamps)."""
    scale = weight_scales(weight).to(weight.device)
    quantized = dequantize(quantize(weight.detach(), scale, 0.0, *WEIGHT_RANGE), scale, 0.0)
    return quantized.to(weight.dtype) + (weight - weight.detach())


def ema(average: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
    """Exponential moving average: decay * average + (1 - decay) * value."""
    return decay * average + (1 - decay) * value
