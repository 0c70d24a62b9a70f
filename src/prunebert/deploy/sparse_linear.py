"""A CSR sparse Linear for highly sparse unstructured weights, swapped in only where it is measured faster.

A dense kernel gains nothing from zeros. `torch.sparse_csr` matmul (MKL on x86 CPUs) skips them, but its
per-nonzero cost is several times a dense FMA's, so it pays only at high sparsity and few tokens (the
issue's measurement on bert-base: 1.81x at 90% sparsity for batch 1, 0.86x for batch 8). Hence
`swap_csr_linears` times every candidate layer on the real input shape and swaps only those whose time
as they would otherwise run (fp32 dense, or the int8 twin `against` builds for `csr+int8`) divided by
CSR time reaches `threshold`. CSR matmul has no bf16 kernel on CPU: fp32 only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Against", "CSRLinear", "LayerProbe", "probe_layer", "probes_as_dicts", "swap_csr_linears"]


def _sparse_csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and the reason for the probe
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().float().to_sparse_csr()


class CSRLinear(nn.Module):
    """`y = x W^T + b` with W held as a CSR matrix: (out, in), only its nonzeros stored. Inference only."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", _sparse_csr(weight))
        # (out, 1): addmm broadcasts it over the token columns of W @ x^T
        self.register_buffer("bias", None if bias is None else bias.detach().float().reshape(-1, 1).clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> CSRLinear:
        """The CSR twin of a dense `nn.Linear` (same outputs up to float summation order)."""
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        cols = x.reshape(-1, self.in_features).T  # (in, tokens)
        if self.bias is None:
            y: torch.Tensor = torch.sparse.mm(self.weight, cols)  # (out, tokens)
        else:
            y = torch.addmm(self.bias, self.weight, cols)
        return y.T.contiguous().reshape(*lead, self.out_features)  # (..., out)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        density = nnz / max(1, self.in_features * self.out_features)
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.3f}"


@dataclass
class LayerProbe:
    """One layer's timing: dense vs CSR seconds per call on the probe input, and whether it was swapped."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    dense_s: float | None  # None: swapped with force=True, not timed
    csr_s: float | None
    speedup: float | None
    swapped: bool


def _time(fn: Callable[[], Any], repeats: int) -> float:
    """Best of `repeats` calls after one warm-up call (the minimum is the least disturbed by load)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


#: what a layer runs as if it is not swapped to CSR, built from the fp32 Linear (None: the Linear itself)
Against = Callable[[nn.Linear], nn.Module] | None


@torch.inference_mode()
def probe_layer(
    linear: nn.Linear, tokens: int, repeats: int = 5, against: Against = None
) -> tuple[float, float]:
    """Seconds per call of `linear` as it would otherwise run (`against`) and as CSR, on a random
    (tokens, in_features) input."""
    x = torch.randn(tokens, linear.in_features, dtype=linear.weight.dtype)
    reference, csr = linear if against is None else against(linear), CSRLinear.from_linear(linear)
    return _time(lambda: reference(x), repeats), _time(lambda: csr(x), repeats)


def _sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).float().mean().item())


def swap_csr_linears(
    model: nn.Module,
    tokens: int,
    threshold: float = 1.1,
    min_sparsity: float = 0.5,
    repeats: int = 5,
    force: bool = False,
    against: Against = None,
) -> list[LayerProbe]:
    """Replace each fp32 `nn.Linear` whose CSR form is >= `threshold` times faster on `tokens` rows than
    the layer as it would otherwise run: itself, or `against(layer)` (e.g. its int8 twin).

    `tokens` is batch x sequence length of the workload that will run (the decision depends on it).
    Layers below `min_sparsity` are not probed. `force` swaps every candidate without timing (tests).
    Returns one `LayerProbe` per candidate layer; the model is changed in place.
    """
    probes = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or module.weight.dtype != torch.float32:
            continue
        sparsity = _sparsity(module.weight)
        if sparsity < min_sparsity:
            continue
        dense_s: float | None = None
        csr_s: float | None = None
        speedup: float | None = None
        if not force:
            dense_s, csr_s = probe_layer(module, tokens, repeats, against)
            speedup = dense_s / max(csr_s, 1e-12)
        swapped = force or (speedup is not None and speedup >= threshold)
        if swapped:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, CSRLinear.from_linear(module))
        shape = (module.out_features, module.in_features)
        probes.append(LayerProbe(name, shape, sparsity, dense_s, csr_s, speedup, swapped))
    return probes


def probes_as_dicts(probes: list[LayerProbe]) -> list[dict[str, Any]]:
    """JSON-ready probe records."""
    return [asdict(p) for p in probes]
