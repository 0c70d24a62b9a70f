"""CSR Linear and the torch variants (csr, int8, bf16): same outputs as dense within tolerance."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from prunebert import Pruner, PruningConfig
from prunebert.deploy import sparse_linear
from prunebert.deploy.inference import TokenModel
from prunebert.deploy.sparse_linear import Against, CSRLinear, swap_csr_linears
from prunebert.deploy.torch_variants import CSRSettings, parse_variant, prepare_torch_variant
from prunebert.errors import PrunebertError
from tiny import tiny_classifier


def _sparse_linear(bias: bool, sparsity: float = 0.9) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(48, 40, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.rand_like(linear.weight) >= sparsity)
    return linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 48), (2, 7, 48)])
def test_csr_linear_matches_dense(bias: bool, shape: tuple[int, ...]) -> None:
    linear = _sparse_linear(bias)
    csr = CSRLinear.from_linear(linear)
    x = torch.randn(shape)
    with torch.inference_mode():
        expected, got = linear(x), csr(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert csr.weight.layout == torch.sparse_csr
    assert csr.weight.values().numel() == int((linear.weight != 0).sum())  # only nonzeros stored


def _pruned_model(sparsity: float = 0.9) -> TokenModel:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method="magnitude", sparsity=sparsity, schedule="oneshot"))
    pruner.start(1)
    pruner.update(1)
    pruner.bake()
    return TokenModel(model.eval(), "logits").eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask, torch.zeros_like(ids)


def test_forced_swap_replaces_sparse_linears_only_and_keeps_outputs() -> None:
    module = _pruned_model()
    with torch.inference_mode():
        expected = module(*_inputs())
    probes = swap_csr_linears(module, tokens=36, min_sparsity=0.5, force=True)
    swapped = {p.name for p in probes if p.swapped}
    assert len(swapped) == 12  # 2 layers x (Q, K, V, attention output, FFN in, FFN out)
    assert all(isinstance(module.get_submodule(n), CSRLinear) for n in swapped)
    assert isinstance(module.model.classifier, nn.Linear)  # dense: never a candidate
    with torch.inference_mode():
        torch.testing.assert_close(module(*_inputs()), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("threshold", "expect_swaps"), [(0.0, True), (float("inf"), False)])
def test_probe_threshold_decides(threshold: float, expect_swaps: bool) -> None:
    module = _pruned_model()
    probes = swap_csr_linears(module, tokens=16, threshold=threshold, repeats=1)
    assert len(probes) == 12
    assert all(p.dense_s and p.csr_s and p.speedup for p in probes)  # every candidate was timed
    assert all(p.swapped is expect_swaps for p in probes)
    kinds = {type(module.get_submodule(p.name)) for p in probes}
    assert kinds == ({CSRLinear} if expect_swaps else {nn.Linear})


class _Sleeps(nn.Module):
    """A stand-in for the layer as it would otherwise run, taking `seconds` per call."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seconds:
            time.sleep(self.seconds)
        return x


@pytest.mark.parametrize(("seconds", "expect_swaps"), [(0.05, True), (0.0, False)])
def test_csr_must_beat_the_layer_as_it_would_otherwise_run(seconds: float, expect_swaps: bool) -> None:
    """Timed against `against(layer)`, not the fp32 layer: a 50 ms stand-in loses to CSR everywhere, a
    free one wins everywhere (a CSR matmul of a 64-wide layer takes far over 0 s and far under 50 ms)."""
    module = _pruned_model()
    built: list[nn.Linear] = []

    def against(linear: nn.Linear) -> nn.Module:
        built.append(linear)
        return _Sleeps(seconds)

    probes = swap_csr_linears(module, tokens=16, threshold=1.1, repeats=1, against=against)
    assert len(built) == 12 and all(type(linear) is nn.Linear for linear in built)
    assert all(p.swapped is expect_swaps for p in probes)


def test_csr_plus_int8_probes_csr_against_the_int8_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    """`csr+int8` leaves a layer int8 where CSR is not faster, so CSR is timed against that int8 layer."""
    seen: list[type] = []
    probe = sparse_linear.probe_layer

    def recording(
        linear: nn.Linear, tokens: int, repeats: int = 5, against: Against = None
    ) -> tuple[float, float]:
        seen.append(type(against(linear)) if against else type(linear))
        return probe(linear, tokens, repeats, against)

    monkeypatch.setattr(sparse_linear, "probe_layer", recording)
    prepared = prepare_torch_variant(_pruned_model(), "csr+int8", tokens=16, csr=CSRSettings(repeats=1))
    assert prepared.info["csr"]["against"] == "int8" and len(seen) == 12
    assert all("quantized" in kind.__module__ for kind in seen)
    seen.clear()
    prepare_torch_variant(_pruned_model(), "csr", tokens=16, csr=CSRSettings(repeats=1))
    assert seen == [nn.Linear] * 12


def _max_diff(variant: str, module: TokenModel) -> tuple[float, float, nn.Module]:
    prepared = prepare_torch_variant(module, variant, tokens=36, csr=CSRSettings(force=True))
    with torch.inference_mode():
        ref = module(*_inputs())
        out = prepared.module(*_inputs()).float()
    return float((out - ref).abs().max()), float(ref.abs().max()), prepared.module


@pytest.mark.parametrize(
    ("variant", "rel_tol"), [("fp32", 0.0), ("csr", 1e-4), ("int8", 0.05), ("csr+int8", 0.05), ("bf16", 0.05)]
)
def test_torch_variants_match_dense_within_tolerance(variant: str, rel_tol: float) -> None:
    module = _pruned_model()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    diff, scale, prepared = _max_diff(variant, module)
    assert diff <= rel_tol * scale + 1e-6, (variant, diff, scale)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # input left untouched
    kinds = {type(m).__name__ for m in prepared.modules()}
    if "csr" in variant:
        assert "CSRLinear" in kinds
    if "int8" in variant:
        assert any("quantized" in type(m).__module__ for m in prepared.modules())
        assert not any(type(m) is nn.Linear for m in prepared.modules())  # every dense Linear quantized
    if variant == "bf16":
        assert all(p.dtype == torch.bfloat16 for p in prepared.parameters())


def test_int8_changes_outputs_a_little_not_zero() -> None:
    """The quantized model really is quantized: close to dense, but not bit-equal."""
    diff, _, _ = _max_diff("int8", _pruned_model(sparsity=0.5))
    assert diff > 0


@pytest.mark.parametrize("name", ["csr+bf16", "fp16", "int8+bf16", "csr+gpu"])
def test_bad_variants_are_refused(name: str) -> None:
    with pytest.raises(PrunebertError):
        parse_variant(name)
