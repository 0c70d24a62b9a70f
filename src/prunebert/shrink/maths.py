"""The pure maths of retraining-free structured pruning (Kwon et al. 2022, arXiv:2204.09656).

Kwon, Kim, Mahoney, Hassoun, Keutzer & Gholami, "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022): a mask variable m_i = 1 multiplies each attention head's context and each
FFN neuron's activation. With per-example gradients g_n = dL_n/dm, the loss increase of zeroing a set P
of masks is, to second order with the empirical Fisher F = sum_n g_n g_n^T,

    dL(P) ~ 1/2 * 1_P^T F 1_P = 1/2 * sum_n (sum_{i in P} g_{n,i})^2           (their eq. 4-6)

Its diagonal (`fisher_diagonal`) scores each group alone (the mask search); its block per layer (the
Gram matrix of the gradients, `accumulate_gram`) lets mask rearrangement (`rearrange_group`) trade the
pruned groups of a layer for others that interact less. Mask tuning then rescales the kept groups of each
layer by least squares so the layer's output matches the dense model's (`head_system`, `neuron_system`,
`solve_scales`). Tensors in, tensors out: the hooks that produce them live in `prunebert.shrink.gates`.
"""

from __future__ import annotations

import torch

__all__ = [
    "accumulate_gram",
    "block_sums",
    "center",
    "fisher_diagonal",
    "greedy_prune_order",
    "head_system",
    "neuron_system",
    "rearrange_group",
    "rearrange_masks",
    "relative_error",
    "solve_scales",
    "solve_weights",
    "weight_error",
    "weight_system",
]


def accumulate_gram(gram: torch.Tensor | None, grads: torch.Tensor) -> torch.Tensor:
    """`gram + grads^T grads` (float64): the empirical Fisher block of per-example gradients (B, G). (G, G)"""
    g = grads.detach().double()
    update = g.T @ g
    return update if gram is None else gram + update


def fisher_diagonal(gram: torch.Tensor) -> torch.Tensor:
    """Each group's own Fisher information, sum_n g_{n,i}^2: the diagonal of its block. (..., G)"""
    return torch.diagonal(gram, dim1=-2, dim2=-1).clone()


def greedy_prune_order(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nested pruned sets of one layer, chosen greedily on the layer's Fisher block. ((G,), (G + 1,))

    P_0 is empty and P_{m+1} = P_m + the group i with the smallest loss increase
    q(P + i) - q(P) = 2 sum_{j in P} F_ij + F_ii, where q(P) = 1_P^T F 1_P (eq. 4-6). Returns the order in
    which groups join P and q(P_m) for m = 0..G. Where the diagonal alone (Kwon et al.'s search) treats
    groups as independent, this counts how their gradients add up: removing many groups of a layer whose
    per-example gradients share a sign costs more than the sum of their diagonal terms.
    """
    count = gram.shape[0]
    g = gram.double()
    diag = torch.diagonal(g)
    dot = torch.zeros(count, dtype=torch.float64)
    free = torch.ones(count, dtype=torch.bool)
    order = torch.empty(count, dtype=torch.long)
    losses = torch.zeros(count + 1, dtype=torch.float64)
    for m in range(count):
        increase = torch.where(free, 2 * dot + diag, torch.full_like(diag, torch.inf))
        index = int(increase.argmin())
        order[m], losses[m + 1] = index, losses[m] + increase[index]
        free[index] = False
        dot += g[:, index]
    return order, losses


def block_sums(grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`greedy_prune_order` of every layer as the search's value tables. ((L, G + 1), (L, G))

    Row l: value[k] = q(all) - q(all but the k kept) for k = 0..G, the loss the k most important groups
    (the last to be pruned) keep away, and those groups in order, most important first: the same shape
    as `search.top_sums` of the diagonal.
    """
    values, orders = [], []
    for gram in grams:
        order, losses = greedy_prune_order(gram)
        values.append(losses[-1] - losses.flip(0))
        orders.append(order.flip(0))
    return torch.stack(values), torch.stack(orders)


def rearrange_group(keep: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Kwon et al.'s greedy mask rearrangement within one layer; same number kept. (G,) bool

    Starting from the pruned set P = ~keep (the lowest-Fisher groups after Kwon et al.'s search), every
    other group in ascending Fisher order joins P, then the member whose removal leaves the smallest
    ||sum_{i in P} g_i||^2 (the loss increase 1_P^T F 1_P) leaves it. With the Gram matrix F,
    ||S - g_i||^2 = ||S||^2 - 2 S.g_i + F_ii and S.g_i = sum_{j in P} F_ij, kept up to date one column
    at a time: O(G) per step.
    """
    pruned_count = int((~keep).sum())
    if pruned_count in (0, keep.numel()):
        return keep.clone()
    order = torch.argsort(fisher_diagonal(gram), stable=True)
    member = ~keep
    dot = gram[:, member].sum(dim=1)  # S . g_i for every i
    diag = fisher_diagonal(gram)
    for index in order[keep[order]].tolist():
        member[index] = True
        dot += gram[:, index]
        left = torch.where(member, diag - 2 * dot, torch.full_like(dot, torch.inf))
        removed = int(left.argmin())
        member[removed] = False
        dot -= gram[:, removed]
    return ~member


def rearrange_masks(keep: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """`rearrange_group` for every layer: keep (L, G) bool, grams (L, G, G). (L, G) bool"""
    return torch.stack([rearrange_group(k, g) for k, g in zip(keep, grams, strict=True)])


def center(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean over the last (hidden) axis: what the LayerNorm after a residual sum ignores."""
    return x - x.mean(dim=-1, keepdim=True)


def head_system(
    outputs: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal equations of min_s ||sum_k s_k O_k - B||^2 over tokens and hidden units, LayerNorm-centred.

    outputs: (K, N, D), kept head k's contribution O_k = ctx_k W_k^T to the N tokens; target: (N, D),
    B = dense pre-LayerNorm output - bias - residual. Centring each token over D drops the per-token
    shift the next LayerNorm removes anyway (Kwon et al. fit a constant column for it). Returns
    (A^T A (K, K), A^T B (K,), B^T B ()) in float64, to be summed over batches.
    """
    a = center(outputs.double()).flatten(1)  # (K, N*D)
    b = center(target.double()).flatten()  # (N*D,)
    return a @ a.T, a @ b, b @ b


def neuron_system(
    acts: torch.Tensor, weight: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`head_system` for FFN neurons without forming A: column j of A is a_j (x) w_j over (token, unit).

    acts: (N, K) kept neurons' activations; weight: (D, K) their columns of the output projection;
    target: (N, D). A^T A = (acts^T acts) * (W~^T W~) with W~ centred over D, and
    (A^T B)_j = sum_t a_tj (B~ W~)_tj (Kwon et al.'s FFN least squares).
    """
    a, w, b = acts.double(), center(weight.double().T).T, center(target.double())
    return (a.T @ a) * (w.T @ w), (a * (b @ w)).sum(dim=0), (b * b).sum()


def solve_scales(
    ata: torch.Tensor, atb: torch.Tensor, damp: float, limit: float = 10.0
) -> torch.Tensor | None:
    """argmin_s ||A s - B||^2 + lam ||s - 1||^2, lam = damp * mean(diag(A^T A)); None if unusable.

    The ridge pulls toward s = 1 (the unscaled mask), as Kwon et al.'s damped LSMR does; a solution that
    is not finite or has |s| > `limit` (their bound, 10) is refused and the layer keeps s = 1.
    """
    k = ata.shape[0]
    lam = damp * float(torch.diagonal(ata).mean()) if k else 0.0
    system = ata.double() + lam * torch.eye(k, dtype=torch.float64)
    try:
        scales: torch.Tensor = torch.linalg.solve(system, atb.double() + lam)
    except RuntimeError:  # singular even with the ridge (all-zero activations)
        return None
    if not bool(torch.isfinite(scales).all()) or bool((scales.abs() > limit).any()):
        return None
    return scales


def relative_error(ata: torch.Tensor, atb: torch.Tensor, btb: torch.Tensor, scales: torch.Tensor) -> float:
    """||A s - B||^2 / ||B||^2 from the normal equations (1.0 when B is zero)."""
    s = scales.double()
    error = s @ ata.double() @ s - 2 * s @ atb.double() + btb.double()
    return float(error / btb) if float(btb) > 0 else 1.0


def weight_system(
    inputs: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal equations of min_W ||[X 1] W - B||^2 for an output projection's kept inputs.

    inputs: X (N, K), with a column of ones appended for the bias; target: B (N, D). Returns
    (A^T A (K+1, K+1), A^T B (K+1, D), B^T B ()) in float64, to be summed over batches (`solve_weights`).
    """
    x = torch.cat([inputs.double(), torch.ones(inputs.shape[0], 1, dtype=torch.float64)], dim=1)
    b = target.double()
    return x.T @ x, x.T @ b, (b * b).sum()


def solve_weights(ata: torch.Tensor, atb: torch.Tensor, start: torch.Tensor, damp: float) -> torch.Tensor:
    """argmin_W ||A W - B||^2 + lam ||W - W0||^2, lam = damp * mean(diag(A^T A)). (K+1, D)

    K-prune's sublayer-wise weight tuning (Park et al., ICLR 2024) in closed form: every kept column of
    the output projection (and its bias, the last row) is refitted so the layer's pre-LayerNorm sum
    matches the dense model's; the ridge pulls toward the original weights `start` (W0, (K+1, D)), so
    directions the calibration tokens do not excite keep their trained values.
    """
    k = ata.shape[0]
    lam = damp * float(torch.diagonal(ata).mean())
    system = ata.double() + lam * torch.eye(k, dtype=torch.float64)
    solution: torch.Tensor = torch.linalg.solve(system, atb.double() + lam * start.double())
    return solution


def weight_error(ata: torch.Tensor, atb: torch.Tensor, btb: torch.Tensor, weights: torch.Tensor) -> float:
    """||A W - B||^2 / ||B||^2 from the normal equations (1.0 when B is zero)."""
    w = weights.double()
    error = (w * (ata.double() @ w)).sum() - 2 * (w * atb.double()).sum() + btb.double()
    return float(error / btb) if float(btb) > 0 else 1.0
