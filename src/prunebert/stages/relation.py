"""Self-attention relation distillation (MiniLMv2, Wang et al. 2021) and sentence-representation closeness.

For one layer, split the queries Q (B, T, H) into R relation heads of width d = H / R; the query-query
relation of head r is the row-wise softmax of Q_r Q_r^T / sqrt(d) over the real keys, a (T, T) matrix
whatever H is, so student and teacher may differ in width. The same for keys and values. The loss is

    L = mean over layer pairs (s, t) of  sum over X in {Q, K, V} of
        1 / (R * N) * sum_r sum_{real query i} KL(Rel_t(X)_{r,i} || Rel_s(X)_{r,i})

with N the real query tokens of the batch. Q, K and V are the outputs of the attention's query / key /
value projections, captured with forward hooks (`capture_projections`): no modeling file is forked, and
whatever module holds a projection (masked, factorised) is the one read.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunebert.errors import PrunebertError
from prunebert.targets import role_modules

__all__ = [
    "PROJECTIONS",
    "capture_projections",
    "encoder_depth",
    "log_relations",
    "mean_pooled",
    "relation_kl",
    "relation_loss",
]

PROJECTIONS = ("query", "key", "value")
#: (role, layer) -> that projection's output (B, T, H)
Captured = dict[tuple[str, int], torch.Tensor]


def log_relations(x: torch.Tensor, heads: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d)) over the real keys: (B, T, H) -> (B, R, T, T), float32."""
    b, t, h = x.shape
    if h % heads:
        raise PrunebertError(
            f"{heads} relation heads do not divide the width {h}; pass --distill.relation_heads dividing "
            "both the student's and the teacher's hidden size"
        )
    d = h // heads
    # float32 even under bf16 autocast (`precision: auto`): autocast would run the product in bf16, whose
    # range cannot hold float32's most negative value used to mask the padded keys
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float().view(b, t, heads, d).transpose(1, 2)  # (B, R, T, d)
        scores = x @ x.transpose(-1, -2) / math.sqrt(d)  # (B, R, T, T)
        padding = attention_mask[:, None, None, :] == 0  # (B, 1, 1, T): padded keys get no mass
        return F.log_softmax(scores.masked_fill(padding, torch.finfo(scores.dtype).min), dim=-1)


def relation_kl(
    student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor, heads: int
) -> torch.Tensor:
    """Mean over relation heads and real queries of KL(teacher relation row || student relation row)."""
    log_s = log_relations(student, heads, attention_mask)
    log_t = log_relations(teacher, heads, attention_mask)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, R, T): one KL per query row
    weight = attention_mask[:, None, :].float()  # (B, 1, T): padded queries do not count
    return (kl * weight).sum() / (weight.sum() * heads).clamp_min(1.0)


def relation_loss(
    student: Mapping[tuple[str, int], torch.Tensor],
    teacher: Mapping[tuple[str, int], torch.Tensor],
    attention_mask: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    heads: int,
    roles: Sequence[str] = PROJECTIONS,
) -> torch.Tensor:
    """Mean over layer pairs (s, t) of the sum over `roles` of `relation_kl`; a pair whose student layer
    did not run in this forward (skipped by LayerDrop) is left out."""
    losses = []
    for s, t in pairs:
        if all((role, s) in student and (role, t) in teacher for role in roles):
            kls = [relation_kl(student[role, s], teacher[role, t], attention_mask, heads) for role in roles]
            losses.append(torch.stack(kls).sum())
    if not losses:
        return torch.zeros((), device=attention_mask.device)
    return torch.stack(losses).mean()


def encoder_depth(model: nn.Module) -> int:
    """How many encoder layers `model` has (by its query projections, as the target table names them)."""
    return len({target.layer for target, _ in role_modules(model, ("query",))})


@contextlib.contextmanager
def capture_projections(model: nn.Module, roles: Sequence[str] = PROJECTIONS) -> Iterator[Captured]:
    """While open, every forward of `model` records each query / key / value projection's output by
    (role, layer). Hooks are placed on entry and removed on exit, so modules swapped in between
    (factorised, slimmed) are the ones read."""
    captured: Captured = {}
    handles = []
    for target, module in role_modules(model, roles):
        handles.append(module.register_forward_hook(_recorder(captured, (target.role, target.layer))))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _recorder(captured: Captured, key: tuple[str, int]) -> Any:
    """A forward hook that stores its module's output under `key`."""

    def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        captured[key] = output  # (B, T, H)

    return record


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers pools them: the mean of the real tokens, (B, H)."""
    weight = attention_mask[:, :, None].to(hidden.dtype)
    return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)
