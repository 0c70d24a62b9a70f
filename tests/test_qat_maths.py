"""QAT arithmetic: golden values, ONNX Runtime's own formulas as the oracle, exact zeros, STE gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunebert.deploy.runtimes import available
from prunebert.quantization.maths import (
    activation_qparams,
    dequantize,
    ema,
    fake_quantize,
    fake_quantize_weight,
    quantize,
    weight_scales,
)


def test_weight_scales_are_row_absmax_over_127_and_1_for_an_all_zero_row() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(weight_scales(w), torch.tensor([[2 / 127], [1.0]]))


def test_weights_quantize_symmetric_with_ties_to_even_and_zeros_exact() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5, 0.0, -0.0]])
    scale = weight_scales(w)
    assert quantize(w, scale, 0.0, -127, 127).tolist() == [[64.0, -127.0, 32.0, 0.0, 0.0]]  # 63.5 -> 64
    fq = fake_quantize_weight(w)
    assert fq[0, 3].item() == 0.0 and fq[0, 4].item() == 0.0 and fq[0, 1].item() == -2.0


def test_activation_qparams_golden() -> None:
    scale, zero = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0))
    assert scale.item() == pytest.approx(4 / 255) and zero.item() == 64.0  # round(63.75)
    scale, zero = activation_qparams(torch.tensor(0.5), torch.tensor(2.0))  # widened to hold 0
    assert scale.item() == pytest.approx(2 / 255) and zero.item() == 0.0
    scale, zero = activation_qparams(torch.tensor(0.0), torch.tensor(0.0))
    assert (scale.item(), zero.item()) == (1.0, 0.0)


def test_activations_quantize_clamp_and_dequantize() -> None:
    scale, zero = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0))
    q = quantize(torch.tensor([-2.0, 0.0, 1.0, 5.0]), scale, zero, 0, 255)
    assert q.tolist() == [0.0, 64.0, 128.0, 255.0]
    assert dequantize(q, scale, zero)[1].item() == 0.0  # 0 is exactly representable


def test_fake_quantize_matches_torch_and_passes_gradients_only_inside_the_range() -> None:
    x = (torch.randn(64, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_()
    scale, zero = activation_qparams(torch.tensor(-1.5), torch.tensor(2.5))
    out = fake_quantize(x, scale, zero, 0, 255)
    expected = torch.fake_quantize_per_tensor_affine(x.detach(), scale.item(), int(zero.item()), 0, 255)
    assert torch.equal(out.detach(), expected)
    out.sum().backward()
    q = torch.round(x.detach() / scale) + zero
    assert torch.equal(x.grad, ((q >= 0) & (q <= 255)).float())


def test_weight_gradient_is_straight_through_and_ema_is_the_decayed_mean() -> None:
    w = torch.randn(3, 5, requires_grad=True)
    (fake_quantize_weight(w) * 2).sum().backward()
    assert torch.equal(w.grad, torch.full((3, 5), 2.0))
    assert ema(torch.tensor(1.0), torch.tensor(3.0), 0.75).item() == 1.5


@pytest.mark.skipif(not available("onnxruntime"), reason="onnxruntime not installed")
def test_scales_and_integers_equal_onnxruntime_quantizer() -> None:
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, quantize_nparray

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 24)) * rng.uniform(0.01, 3, (16, 1))).astype(np.float32)
    w[3] = 0.0  # a pruned row
    ours = weight_scales(torch.from_numpy(w)).numpy()[:, 0]
    for row in range(16):
        zero, scale = compute_scale_zp(
            w[row].min(), w[row].max(), np.int8(-127), np.int8(127), symmetric=True
        )
        assert ours[row] == scale and zero == 0
        q = quantize_nparray(TensorProto.INT8, w[row], scale, zero)
        ref = quantize(torch.from_numpy(w[row]), torch.tensor(ours[row]), 0.0, -127, 127)
        assert np.array_equal(q.astype(np.float32), ref.numpy())
    for low, high in [(-1.3, 7.7), (0.2, 5.0), (-3.0, -0.5)]:
        zero, scale = compute_scale_zp(np.float32(low), np.float32(high), np.uint8(0), np.uint8(255))
        our_scale, our_zero = activation_qparams(torch.tensor(low), torch.tensor(high))
        assert our_scale.item() == scale and our_zero.item() == zero
