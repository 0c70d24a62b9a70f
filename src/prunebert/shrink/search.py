"""The mask search: which heads and FFN neurons to keep under a cost budget (Kwon et al. 2022, sec. 4.1).

Keeping group i costs nothing in loss; pruning it costs about F_ii / 2 (diagonal Fisher), so the search
maximises the kept Fisher sum subject to the model's cost. Within a layer only the count matters to the
cost, so a layer keeps its top-h heads and top-n neurons by Fisher, and the search chooses (h, n) per
layer: a multiple-choice knapsack, solved exactly by dynamic programming over a budget split into
`resolution` units (each layer's cost rounded up, so the result never exceeds the budget).

Costs are a `LayerCosts`: FLOPs (`flop_costs`, linear in h and n as in Kwon et al.'s `search_mac`) or a
measured latency table (`prunebert.shrink.latency`, any shape, where Kwon et al. fit a piecewise-linear
function to their lookup table). For linear costs the result is at least as good as their enumeration
over the number of heads (tested). A layer left with no head and no neuron is dropped: it costs nothing,
not even `LayerCosts.layer` (the LayerNorms and per-layer overheads a kept layer still pays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunebert.errors import PrunebertError

__all__ = ["LayerCosts", "flop_costs", "kept_counts", "search_masks", "top_sums"]


@dataclass(frozen=True)
class LayerCosts:
    """Cost of a model as a function of what each layer keeps: same table for every layer.

    heads[h] / neurons[n]: cost of the attention block with h heads / the FFN with n neurons (0 at 0),
    `layer`: what a kept layer costs besides (LayerNorms, residuals), `base`: everything outside the
    layers (embeddings, classifier, per-call overhead). `unit`: "flops" or "s".
    """

    heads: torch.Tensor  # (H + 1,)
    neurons: torch.Tensor  # (F + 1,)
    layer: float
    base: float
    unit: str

    def model_cost(self, heads_kept: Sequence[int], neurons_kept: Sequence[int]) -> float:
        """Cost of a model whose layer l keeps heads_kept[l] heads and neurons_kept[l] neurons."""
        total = self.base
        for h, n in zip(heads_kept, neurons_kept, strict=True):
            if h or n:
                total += self.layer + float(self.heads[h]) + float(self.neurons[n])
        return total

    def dense_cost(self, layers: int) -> float:
        """Cost of the unpruned model of `layers` layers."""
        full = [len(self.heads) - 1] * layers, [len(self.neurons) - 1] * layers
        return self.model_cost(*full)

    def min_cost(self) -> float:
        """The cheapest model that keeps anything: one layer with one head or one neuron."""
        return self.base + self.layer + min(float(self.heads[1]), float(self.neurons[1]))


def flop_costs(hidden: int, heads: int, intermediate: int, seq_len: int) -> LayerCosts:
    """Encoder FLOPs per sequence of `seq_len` tokens, counted as `prunebert bench`'s `encoder_flops`.

    A head: its query/key/value rows and output columns (2 x 4 x D x d per token) and its share of
    Q K^T and A V (2 x 2 x T x d per token); a neuron: its rows of ffn_in and column of ffn_out
    (2 x 2 x D per token). Biases, LayerNorms and softmax are not counted.
    """
    d = hidden // heads
    per_head = seq_len * (8 * hidden * d + 4 * seq_len * d)
    per_neuron = seq_len * 4 * hidden
    h = torch.arange(heads + 1, dtype=torch.float64) * per_head
    n = torch.arange(intermediate + 1, dtype=torch.float64) * per_neuron
    return LayerCosts(h, n, 0.0, 0.0, "flops")


def top_sums(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (cumulative sums of the scores sorted high to low, with 0 first (R, G + 1); that order)."""
    values, order = scores.double().sort(dim=-1, descending=True, stable=True)
    zero = torch.zeros(*values.shape[:-1], 1, dtype=torch.float64)
    return torch.cat([zero, values.cumsum(dim=-1)], dim=-1), order


def _units(costs: torch.Tensor, unit: float) -> torch.Tensor:
    """Costs in whole budget units, rounded up (never below 0)."""
    return torch.ceil(costs.double().clamp_min(0) / unit - 1e-9).clamp_min(0).long()


def _best_count(cost_units: torch.Tensor, size: int) -> torch.Tensor:
    """For each budget b in 0..size: the largest count whose cost is <= b (-1: none). (size + 1,)"""
    best = torch.full((size + 1,), -1, dtype=torch.long)
    fits = cost_units <= size
    counts = torch.arange(len(cost_units))
    best.scatter_reduce_(0, cost_units[fits], counts[fits], reduce="amax")
    return torch.cummax(best, dim=0).values


def _layer_table(
    head_sums: torch.Tensor,
    neuron_sums: torch.Tensor,
    units: tuple[torch.Tensor, torch.Tensor, int],
    size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best kept Fisher of one layer within each budget 0..size, and its (heads, neurons) choice."""
    head_units, neuron_units, layer_units = units
    best_n = _best_count(neuron_units, size)
    budgets = torch.arange(size + 1)
    value = torch.zeros(size + 1, dtype=torch.float64)  # dropping the layer: Fisher 0 at cost 0
    heads = torch.zeros(size + 1, dtype=torch.long)
    neurons = torch.zeros(size + 1, dtype=torch.long)
    for h in range(len(head_units)):
        rest = budgets - layer_units - head_units[h]
        n = best_n[rest.clamp_min(0)]
        ok = (rest >= 0) & (n >= 0)
        candidate = torch.where(ok, head_sums[h] + neuron_sums[n.clamp_min(0)], -torch.inf)
        better = candidate > value
        value = torch.where(better, candidate, value)
        heads = torch.where(better, h, heads)
        neurons = torch.where(better, n, neurons)
    return value, heads, neurons


def search_masks(
    head_scores: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    neuron_scores: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    costs: LayerCosts,
    budget: float,
    resolution: int = 2000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-masks (L, H) and (L, F) maximising the kept Fisher with `costs.model_cost` <= `budget`.

    Scores (L, G) are per-group Fisher diagonals (kept value: `top_sums`); a pair (values (L, G + 1),
    order (L, G)) gives each count's value and the groups kept first directly (`maths.block_sums`).
    Exact dynamic programming over per-layer (heads, neurons) counts with the layer budget in
    `resolution` units (rounded up: at most 2 units per layer of slack). At least one layer is kept.
    """
    spare = budget - costs.base
    if spare <= 0 or budget < costs.min_cost():
        raise PrunebertError(
            f"a budget of {budget:.4g} {costs.unit} is below the cheapest model that keeps anything "
            f"({costs.min_cost():.4g}); ask for less"
        )
    unit = spare / resolution
    units = (
        _units(costs.heads, unit),
        _units(costs.neurons, unit),
        int(_units(torch.tensor(costs.layer), unit)),
    )
    head_sums, head_order = head_scores if isinstance(head_scores, tuple) else top_sums(head_scores)
    neuron_sums, neuron_order = neuron_scores if isinstance(neuron_scores, tuple) else top_sums(neuron_scores)
    layers = head_order.shape[0]
    total = torch.zeros(resolution + 1, dtype=torch.float64)
    spent: list[torch.Tensor] = []  # per layer: budget units given to it, for each total budget
    tables = []
    for layer in range(layers):
        value, heads, neurons = _layer_table(head_sums[layer], neuron_sums[layer], units, resolution)
        tables.append((heads, neurons))
        # total'[b] = max_c total[b - c] + value[c], c <= b  (max-plus convolution)
        rows, cols = torch.arange(resolution + 1)[:, None], torch.arange(resolution + 1)[None, :]
        combined = torch.where(cols <= rows, total[(rows - cols).clamp_min(0)] + value[None, :], -torch.inf)
        total, best = combined.max(dim=1)
        spent.append(best)
    keep_heads = torch.zeros(head_order.shape, dtype=torch.bool)
    keep_neurons = torch.zeros(neuron_order.shape, dtype=torch.bool)
    left = resolution
    for layer in reversed(range(layers)):
        given = int(spent[layer][left])
        h, n = int(tables[layer][0][given]), int(tables[layer][1][given])
        keep_heads[layer, head_order[layer, :h]] = True
        keep_neurons[layer, neuron_order[layer, :n]] = True
        left -= given
    if not (keep_heads.any() or keep_neurons.any()):
        raise PrunebertError("the search kept nothing (every score is zero); use more calibration examples")
    return keep_heads, keep_neurons


def kept_counts(keep_heads: torch.Tensor, keep_neurons: torch.Tensor) -> tuple[list[int], list[int]]:
    """Heads and neurons kept per layer."""
    return keep_heads.sum(dim=1).tolist(), keep_neurons.sum(dim=1).tolist()
