"""Masks: which weights are kept. Pure functions from importance scores to boolean masks, and their I/O.

A mask is a bool tensor shaped like its weight, True = kept. Masks live beside the model (owned by the
`Pruner`), never inside its state dict, so a saved model has the plain keys transformers expects.
On disk they are a safetensors file of bool tensors keyed by weight name: no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from prunebert.errors import PrunebertError
from prunebert.io import atomic_path

__all__ = [
    "MASKS_FILE",
    "global_masks",
    "layerwise_masks",
    "load_masks",
    "save_masks",
    "sparsity_of",
    "topk_mask",
]

MASKS_FILE = "prunebert_masks.safetensors"


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the `n - round(sparsity * n)` highest scores; the rest are pruned (False)."""
    n = scores.numel()
    keep = n - round(sparsity * n)
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten().float(), keep, sorted=False).indices] = True
    return mask.view_as(scores)


def layerwise_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Every tensor pruned to the same sparsity by its own ranking."""
    return {name: topk_mask(s, sparsity) for name, s in scores.items()}


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One ranking across all tensors, so layers with less important weights lose more of them."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float().cpu() for n in names])  # (total,)
    mask = topk_mask(flat, sparsity)
    out, offset = {}, 0
    for name in names:
        size = scores[name].numel()
        out[name] = mask[offset : offset + size].view_as(scores[name]).to(scores[name].device)
        offset += size
    return out


def sparsity_of(tensor: torch.Tensor) -> float:
    """Fraction of exactly-zero entries (for a bool mask: of False entries)."""
    if tensor.dtype == torch.bool:
        return 1.0 - tensor.float().mean().item()
    return (tensor == 0).float().mean().item()


def save_masks(masks: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, object]) -> None:
    """Write masks (bool) and JSON metadata to one safetensors file, atomically."""
    tensors = {name: m.detach().to("cpu", torch.bool).contiguous() for name, m in masks.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"prunebert": json.dumps(dict(metadata))})


def load_masks(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Read masks and their metadata; a damaged file is a one-line error, never a traceback."""
    if not path.is_file():
        raise PrunebertError(f"no mask file at {path}; pass a directory written by prunebert")
    try:
        masks = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("prunebert", "{}")
    except (SafetensorError, OSError, ValueError) as exc:
        raise PrunebertError(
            f"mask file {path} is damaged ({str(exc).splitlines()[0]}); "
            "re-run the pruning stage that wrote it"
        ) from None
    return {k: v.bool() for k, v in masks.items()}, json.loads(raw)
