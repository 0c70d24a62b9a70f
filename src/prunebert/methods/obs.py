"""oBERT: block-wise empirical-Fisher Optimal Brain Surgeon (Kurtic et al. 2022, arXiv:2203.07259).

The loss near the current weights is approximated to second order with the empirical Fisher F, kept
only in blocks of B consecutive weights (each target matrix flattened row-major, the last block zero-padded):

    F = damp * I + (1/m) * sum_k g_k g_k^T       (per block; g_k: m mini-batch gradients, pruned entries 0)

Removing weight q costs rho_q = w_q^2 / (2 [F^-1]_qq) (the OBS saliency); the pruner ranks by it (global
scope by default: rho is in units of the loss, comparable across layers). The weights pruned in a block,
the set Q, are then removed together with the multi-weight OBS update of the block's survivors,

    dw = -F^-1[:, Q] (F^-1[Q, Q])^-1 w_Q      (Q of one weight q: dw = -F^-1[:, q] w_q / [F^-1]_qq)

which zeroes w_Q exactly and, among all changes that do, raises the quadratic loss 1/2 dw^T F dw least.
The reference code (sparseml's OBSPruningModifier, unstructured masks) applies the sum of the
single-weight updates instead, then zeroes Q; that is exact only when one weight per block goes.

Gradients come fresh at every mask update: the pruner draws `num_grads` mini-batches from its
`gradient_sampler` (the training data under `PruningCallback`, calibration batches in `prune_oneshot`)
and hands each gradient to `observe_gradients`; F is accumulated in chunks of gradients with batched
matmuls (never m full gradients at once), inverted per block by Cholesky in float64, used for the scores
and the update, then dropped. Nothing is kept between mask updates, so nothing is checkpointed.

Cost, measured on all-MiniLM-L6-v2's shapes (10.6 M target weights, random weights and data; one
thread of an AMD EPYC shared with a training run; `benchmarks/obs_cost.py` ->
`benchmarks/results/obs_cost.json`): at B = 50 the block Fisher (inverted in place) is 212,364 blocks
x 50 x 50 float32 = 2.12 GB, held only while a mask update runs; with the gradient buffer (256 MiB) the
update raised peak RSS by 2.47 GB. One update 0 -> 50% with m = 64 took 176 s: 112 s of forward/backward
(1.76 s per batch of 8 x 128 tokens), 18 s accumulating F (0.29 s per gradient), 25 s inverting, 21 s of
OBS update. Memory grows as 4 * B bytes per target weight, the Fisher work as B (accumulation) and B^2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import Field, StrictBool
from torch import nn

from prunebert.distributed import world_size
from prunebert.errors import PrunebertError
from prunebert.methods.base import Count, GradientRequest, MethodOptions, Number, PruningMethod
from prunebert.methods.registry import register_method

__all__ = [
    "ObsOptions",
    "ObsPruning",
    "accumulate_fisher",
    "block_fisher",
    "fisher_inverse",
    "from_blocks",
    "obs_scores",
    "obs_update",
    "to_blocks",
]

#: gradients buffered before each batched Fisher update are capped at this many bytes in all
_BUFFER_BYTES = 256 * 2**20
#: blocks per float64 chunk of the inversion and the update (4096 blocks of 50 x 50: 82 MB)
_CHUNK_BLOCKS = 4096


# -- pure maths ---------------------------------------------------------------------------------------
def to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """`x` flattened row-major and zero-padded to whole blocks: (nb, B), nb = ceil(numel / B)."""
    flat = x.detach().reshape(-1)
    return nn.functional.pad(flat, (0, -flat.numel() % block)).view(-1, block)


def from_blocks(blocks: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_blocks`: (nb, B) -> the shape of `like`, padding dropped."""
    return blocks.reshape(-1)[: like.numel()].view(like.shape)


def accumulate_fisher(fisher: torch.Tensor, grads: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """fisher += scale * sum_k g_k g_k^T in every block, in place: fisher (nb, B, B), grads (nb, B, c)
    holding c gradients side by side (one batched matmul per chunk instead of c rank-1 updates)."""
    return fisher.baddbmm_(grads, grads.transpose(1, 2), alpha=scale)


def block_fisher(grads: torch.Tensor, block: int, damp: float) -> torch.Tensor:
    """damp * I + (1/m) sum_k g_k g_k^T per block, from m gradients (m, n) -> (nb, B, B)."""
    stacked = torch.stack([to_blocks(g, block) for g in grads], dim=2).float()  # (nb, B, m)
    fisher = torch.zeros(stacked.shape[0], block, block, device=grads.device)
    accumulate_fisher(fisher, stacked, 1.0 / grads.shape[0])
    fisher.diagonal(dim1=1, dim2=2).add_(damp)
    return fisher


def fisher_inverse(fisher: torch.Tensor, damp: float = 0.0) -> torch.Tensor:
    """(fisher + damp * I)^-1 per block, (nb, B, B), written over `fisher`: Cholesky in float64, a chunk of
    blocks at a time (damp is added in float64, where it is not lost beside large gradient products)."""
    eye = torch.eye(fisher.shape[-1], dtype=torch.float64, device=fisher.device)
    for part in fisher.split(_CHUNK_BLOCKS):
        chol, info = torch.linalg.cholesky_ex(part.double() + damp * eye)
        if bool((info != 0).any()):
            raise PrunebertError(
                f"the block Fisher is not positive definite (damp {damp:g}); raise the obs option damp"
            )
        part.copy_(torch.cholesky_inverse(chol))
    return fisher


def obs_scores(w_blocks: torch.Tensor, finv_diag: torch.Tensor) -> torch.Tensor:
    """OBS saliency w^2 / (2 [F^-1]_qq): the loss increase of removing each weight alone, (nb, B)."""
    return w_blocks.float() ** 2 / (2.0 * finv_diag.float())


def obs_update(w_blocks: torch.Tensor, finv: torch.Tensor, prune: torch.Tensor) -> torch.Tensor:
    """Weights after removing the set Q = `prune` of each block with the multi-weight OBS update.

    w_blocks (nb, B), finv (nb, B, B), prune (nb, B) bool -> (nb, B), pruned entries exactly 0. Per block,
    x solves F^-1[Q, Q] x_Q = w_Q (x = 0 off Q) and w <- w - F^-1 x. The system is padded to B x B with
    the identity off Q, so blocks with one, several or all weights pruned share one batched solve;
    blocks with none are left alone.
    """
    out = w_blocks.clone()
    eye = torch.eye(w_blocks.shape[1], dtype=torch.float64, device=w_blocks.device)
    for rows in prune.any(dim=1).nonzero().squeeze(1).split(_CHUNK_BLOCKS):
        q = prune[rows]  # (k, B)
        f = finv[rows].double()  # (k, B, B)
        system = torch.where(q.unsqueeze(2) & q.unsqueeze(1), f, eye)  # F^-1[Q, Q], identity elsewhere
        w = w_blocks[rows].double()
        x = torch.linalg.solve(system, (w * q).unsqueeze(2))  # (k, B, 1), 0 off Q
        updated = (w - torch.bmm(f, x).squeeze(2)).masked_fill(q, 0.0)
        out[rows] = updated.to(out.dtype)
    return out


# -- options and the stateful method --------------------------------------------------------------------
class ObsOptions(MethodOptions):
    """The Fisher's blocks and samples, its dampening, and whether survivors get the OBS update."""

    block_size: Count = Field(
        50,
        ge=1,
        description="weights per Fisher block (B; memory 4*B bytes per target weight; a matrix whose size is "
        "not a multiple is zero-padded in its last block)",
    )
    #: 64 keeps m above B = 50, so every block's Fisher can be full rank, and costs ~3 min per update for
    #: minilm-l6 on one CPU thread, measured; the paper's 1024 would cost ~30 min per update
    num_grads: Count = Field(
        64, ge=1, description="mini-batch gradients per mask update (m; 64 > B keeps the Fisher full rank)"
    )
    #: absolute, as the reference's 1e-7 for BERT-base; tune it in one-shot runs: too large ranks as
    #: magnitude, too small is unstable
    damp: Number = Field(1e-7, gt=0.0, description="lambda added to the Fisher's diagonal (absolute)")
    grad_batch_size: Count = Field(
        8,
        ge=1,
        description="examples per sampled gradient (the reference's 8; ignored for calibration batches "
        "given pre-batched)",
    )
    update_weights: StrictBool = Field(
        True,
        description="apply the OBS update to the survivors (false: rank by OBS saliency, then only zero the "
        "pruned weights)",
    )


@register_method("obs")
class ObsPruning(PruningMethod):
    """oBERT: rank by the block-Fisher OBS saliency and compensate the survivors of each block.

    Monotone (pruned weights stay pruned). Each mask update costs `num_grads` forward/backward passes on
    sampled mini-batches plus the Fisher work (see the module docstring), and holds the block Fisher,
    4 * block_size bytes per target weight (2.12 GB for minilm-l6 at B = 50), until the masks are set.
    Survivors moved by the update keep their optimizer moments (as in the reference); the pruner zeroes
    the pruned entries' moments. Single process only for now: every rank would need the same samples
    and the same update.
    """

    paper: ClassVar[str] = "Kurtic et al. 2022 (oBERT), arXiv:2203.07259"
    options_cls = ObsOptions
    #: oBERT prunes with one global ranking (its recipes' global_sparsity: True)
    defaults: ClassVar[dict[str, Any]] = {"scope": "global"}

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, ObsOptions)
        self.opts = options
        self._fisher: dict[str, torch.Tensor] = {}  # name -> (nb, B, B): sum of g g^T, then F^-1
        self._buffer: dict[str, torch.Tensor] = {}  # name -> (nb, B, c): gradients not yet in the sum
        self._buffered = 0
        self._observed = 0
        self._inverted = False

    def bind(self, model: nn.Module, targets: Sequence[Any], config: Any) -> None:
        """Refuse multi-process runs (the samples and the update would differ between ranks)."""
        if world_size() > 1:
            raise PrunebertError("obs pruning runs in a single process for now; launch without DDP")

    def gradient_request(self) -> GradientRequest:
        """`num_grads` gradients of `grad_batch_size` examples before every mask update."""
        return GradientRequest(self.opts.num_grads, self.opts.grad_batch_size)

    @torch.no_grad()
    def observe_gradients(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Buffer one mini-batch gradient of every target; fold the buffer into F when it is full."""
        if not self._buffer:
            self._start(grads)
        for name, grad in grads.items():
            self._buffer[name][:, :, self._buffered] = to_blocks(grad, self.opts.block_size)
        self._buffered += 1
        self._observed += 1
        if self._buffered == next(iter(self._buffer.values())).shape[2]:
            self._flush()

    def _start(self, grads: Mapping[str, torch.Tensor]) -> None:
        """Zero Fisher sums and a gradient buffer of as many gradients as `_BUFFER_BYTES` allows."""
        b = self.opts.block_size
        blocks = {name: -(-g.numel() // b) for name, g in grads.items()}
        chunk = max(1, min(self.opts.num_grads, _BUFFER_BYTES // (4 * b * max(1, sum(blocks.values())))))
        for name, g in grads.items():
            self._fisher[name] = torch.zeros(blocks[name], b, b, device=g.device)
            self._buffer[name] = torch.zeros(blocks[name], b, chunk, device=g.device)
        self._buffered = self._observed = 0
        self._inverted = False

    def _flush(self) -> None:
        for name, fisher in self._fisher.items():
            accumulate_fisher(fisher, self._buffer[name][:, :, : self._buffered])
        self._buffered = 0

    def _inverses(self) -> dict[str, torch.Tensor]:
        """F^-1 per target from the gradients observed since the last mask update."""
        if not self._inverted:
            if self._observed == 0:
                raise PrunebertError(
                    "obs pruning needs gradient samples before scoring; prune through Pruner.update with "
                    "a gradient_sampler (PruningCallback and prune_oneshot provide one)"
                )
            self._flush()
            self._buffer.clear()
            for fisher in self._fisher.values():
                fisher_inverse(fisher.div_(self._observed), self.opts.damp)
            self._inverted = True
        return self._fisher

    @torch.no_grad()
    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """w^2 / (2 [F^-1]_qq) for every weight of every target."""
        finvs, b = self._inverses(), self.opts.block_size
        return {
            name: from_blocks(obs_scores(to_blocks(w, b), finvs[name].diagonal(dim1=1, dim2=2)), w)
            for name, w in weights.items()
        }

    @torch.no_grad()
    def on_masks_changing(
        self,
        old: Mapping[str, torch.Tensor],
        new: Mapping[str, torch.Tensor],
        weights: Mapping[str, torch.Tensor],
    ) -> None:
        """Apply the OBS update for the weights pruned now (still unzeroed), then free the Fisher."""
        if self.opts.update_weights and self._inverted:
            b = self.opts.block_size
            for name, weight in weights.items():
                pruned = old[name].to(weight.device) & ~new[name].to(weight.device)
                if bool(pruned.any()):
                    updated = obs_update(to_blocks(weight, b), self._fisher[name], to_blocks(pruned, b))
                    weight.copy_(from_blocks(updated, weight))
        self._release()

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """Nothing is kept between mask updates."""
        self._release()

    def _release(self) -> None:
        self._fisher.clear()
        self._buffer.clear()
        self._buffered = self._observed = 0
        self._inverted = False
