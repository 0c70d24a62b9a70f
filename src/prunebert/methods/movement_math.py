"""The maths of movement pruning's scores (Sanh, Wolf & Rush 2020, arXiv:2005.07683), as pure functions.

Sanh et al. train the scores S as parameters of their own optimizer group: Adam at `mask_scores_learning_rate`
1e-2, on the straight-through gradient dL/dS = W * dL/dW' plus, for soft movement, the gradient of the
regulariser lam_t * mean over matrices of mean(sigmoid(S)) (`regularization(mode="l1")` in their
`masked_run_glue.py`). Soft movement keeps sigmoid(S) > tau_t; tau_t and lam_t rise together on a cubic
schedule (`schedule_threshold`: lam_t = lam * tau_t / tau).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "MIN_KEEP",
    "adam_score_step",
    "ramped",
    "score_reach",
    "sigmoid_l1_grad",
    "sigmoid_threshold_masks",
]

#: Adam's moment decays and epsilon for the scores (the authors' AdamW defaults; their score group has no
#: weight decay)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: each matrix keeps at least this fraction of its entries, plus one (the authors' `ThresholdBinarizer`)
MIN_KEEP = 0.005


def adam_score_step(
    scores: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    step: int,
    lr: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam step (Kingma & Ba 2015, as `torch.optim.Adam`) on the scores; `step` counts from 1.

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    S <- S - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    Returns the new (scores, m, v), all float32.
    """
    (b1, b2), g = ADAM_BETAS, grad.float()
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom = (v.sqrt() / math.sqrt(1 - b2**step)).add(ADAM_EPS)
    return scores - (lr / (1 - b1**step)) * m / denom, m, v


def sigmoid_l1_grad(scores: torch.Tensor, lam: float, matrices: int) -> torch.Tensor:
    """d/dS of lam * mean over `matrices` matrices of mean(sigmoid(S)), for one matrix's scores S:
    lam * s * (1 - s) / (matrices * S.numel()), s = sigmoid(S). The pull is largest at S = 0."""
    s = torch.sigmoid(scores.float())
    return (lam / (matrices * scores.numel())) * s * (1.0 - s)


def ramped(final: float, sparsity: float, target: float) -> float:
    """final * sparsity / target, capped at final: tau_t (or lam_t) of a run whose sparsity schedule is at
    `sparsity` of its `target`. On the cubic schedule from 0 this is Sanh et al.'s cubic threshold ramp
    final * (1 - (1 - p)^3) (p: progress through the pruning window); 0 before pruning starts."""
    if target <= 0:
        return final
    return final * min(1.0, max(0.0, sparsity / target))


def sigmoid_threshold_masks(scores: Mapping[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
    """Soft movement's masks sigmoid(S) > tau; a matrix that would keep fewer than MIN_KEEP * numel + 1
    entries keeps its top ones instead (no matrix is emptied)."""
    masks = {}
    for name, s in scores.items():
        mask = torch.sigmoid(s.float()) > tau
        floor = int(MIN_KEEP * s.numel()) + 1
        if int(mask.sum()) < floor:
            mask = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
            mask[s.flatten().topk(floor).indices] = True
            mask = mask.view_as(s)
        masks[name] = mask
    return masks


def score_reach(lr: float, steps: int, tau: float) -> float:
    """How many times over a score moving by `lr` every step for `steps` steps (Adam moves each score by
    at most about lr per step) can cross from 0 to logit(tau), below which soft movement prunes it."""
    return lr * steps / abs(math.log(tau / (1.0 - tau)))
