"""Multi-process training (DDP under `accelerate launch` / `torchrun`): who writes, and identical masks.

Every rank runs the same stage code. Masks are decided once: rank 0's choice is broadcast, so a tie
broken differently on another device can never let the ranks' masks drift apart. Only the main process
(global rank 0) writes run files; the Trainer's own checkpoint logic follows the same rule.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch
import torch.distributed as dist

__all__ = ["barrier", "broadcast_masks", "gather_strings", "is_main_process", "mask_digest", "world_size"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on global rank 0, and in a single-process run (set by the launcher before any process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Number of training processes (1 without a process group)."""
    return dist.get_world_size() if _active() else 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def broadcast_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (unchanged in a single process)."""
    if not _active():
        return dict(masks)
    out = {}
    for name in sorted(masks):  # the same order on every rank
        mask = masks[name]
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        wire = mask.to(device, torch.uint8).contiguous()  # gloo has no bool collectives
        dist.broadcast(wire, src=0)
        out[name] = wire.to(mask.device, torch.bool)
    return out


def mask_digest(masks: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the masks' names, shapes and bits: equal digests mean identical masks."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name].detach().to("cpu", torch.bool).contiguous()
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        digest.update(mask.numpy().tobytes())
    return digest.hexdigest()


def gather_strings(value: str) -> list[str]:
    """`value` from every rank, in rank order (`[value]` in a single process)."""
    if not _active():
        return [value]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return [str(v) for v in out]
