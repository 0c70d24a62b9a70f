"""The pure maths of `prunebert.shrink` on hand-written tensors: Fisher, rearrangement, search, fits."""

from __future__ import annotations

import itertools

import pytest
import torch

from prunebert.errors import PrunebertError
from prunebert.shrink.latency import LatencyTable, _interpolate, grid, isotonic
from prunebert.shrink.maths import (
    accumulate_gram,
    block_sums,
    center,
    fisher_diagonal,
    greedy_prune_order,
    head_system,
    neuron_system,
    rearrange_group,
    relative_error,
    solve_scales,
)
from prunebert.shrink.search import LayerCosts, flop_costs, search_masks, top_sums


def test_gram_and_fisher_golden() -> None:
    grads = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # 2 examples x 2 masks
    gram = accumulate_gram(accumulate_gram(None, grads[:1]), grads[1:])
    assert gram.tolist() == [[10.0, -1.0], [-1.0, 5.0]]  # 1*2 + 3*(-1)
    assert fisher_diagonal(gram).tolist() == [10.0, 5.0]  # sum_n g^2 (Kwon et al.'s compute_fisher_info)


def _kwon_rearrange(keep: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Their `greedy_rearrange` (prune/rearrange.py), verbatim in substance: grads (examples, groups)."""
    pruned = int((~keep).sum())
    g = grads.T
    order = g.pow(2).sum(dim=1).sort().indices.tolist()
    masked = order[:pruned]
    for index in order[pruned:]:
        masked.append(index)
        vectors = g[masked]
        lengths = (vectors.sum(dim=0) - vectors).pow(2).sum(dim=1)
        del masked[int(lengths.argmin())]
    out = torch.ones_like(keep)
    out[masked] = False
    return out


def test_rearrange_golden_prunes_the_pair_that_cancels() -> None:
    # masks 0 and 1 have the smallest Fisher (1 each), but their gradients add up: pruning both costs
    # ||(2, 0)||^2 = 4. Mask 3 (Fisher 5) cancels them: 2 joins and leaves, 3 joins and 0 leaves, so
    # {1, 3} is pruned at ||(-1, -1)||^2 = 2 (the optimum {2, 3}, cost 0, is beyond one greedy pass)
    grads = torch.tensor([[1.0, 1.0, 2.0, -2.0], [0.0, 0.0, 1.0, -1.0]])
    keep = torch.tensor([False, False, True, True])
    gram = accumulate_gram(None, grads)
    assert rearrange_group(keep, gram).tolist() == [True, False, True, False]
    assert rearrange_group(keep, gram).tolist() == _kwon_rearrange(keep, grads).tolist()


def test_rearrange_matches_kwon_et_al_and_never_raises_the_loss_proxy() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        grads = torch.randn(6, 9, generator=g, dtype=torch.float64)
        gram = accumulate_gram(None, grads)
        pruned = 1 + trial % 7
        lowest = torch.ones(9, dtype=torch.bool)  # what the diagonal search keeps: all but the lowest
        lowest[fisher_diagonal(gram).argsort()[:pruned]] = False
        new = rearrange_group(lowest, gram)
        assert new.tolist() == _kwon_rearrange(lowest, grads).tolist()
        assert int(new.sum()) == 9 - pruned
        assert (~new).double() @ gram @ (~new).double() <= (~lowest).double() @ gram @ (
            ~lowest
        ).double() + 1e-9
        start = torch.ones(9, dtype=torch.bool)  # any other start (the block search's): never worse
        start[torch.randperm(9, generator=g)[:pruned]] = False
        again = rearrange_group(start, gram)
        assert int(again.sum()) == 9 - pruned
        assert (~again).double() @ gram @ (~again).double() <= (~start).double() @ gram @ (
            ~start
        ).double() + 1e-9


def test_greedy_prune_order_golden_and_nested_losses() -> None:
    # the pair that cancels: 0 and 1 have the smallest diagonal (1) but add up; 2 and 3 cancel exactly
    grads = torch.tensor([[1.0, 1.0, 2.0, -2.0], [0.0, 0.0, 1.0, -1.0]])
    order, losses = greedy_prune_order(accumulate_gram(None, grads))
    assert order.tolist()[:2] == [0, 3]  # after 0, adding 1 costs 3, adding 3 (which cancels it) costs 3 too
    gram = accumulate_gram(None, grads)
    for m in range(5):  # losses[m] is q of the first m pruned
        member = torch.zeros(4, dtype=torch.float64)
        member[order[:m]] = 1
        assert float(losses[m]) == pytest.approx(float(member @ gram @ member))
    values, kept_first = block_sums(gram[None])
    assert values[0, 0] == 0 and values[0, -1] == pytest.approx(float(losses[-1]))
    assert kept_first[0].tolist() == order.flip(0).tolist()


def test_block_search_spreads_pruning_that_the_diagonal_piles_into_one_layer() -> None:
    # two layers of 4 neurons: layer 0's gradients are independent, layer 1's all share a sign. The
    # diagonal sees layer 1 as cheapest (smaller entries) and prunes all of it; the block counts how its
    # gradients add up and splits the pruning, at a lower true loss proxy 1_P^T F 1_P
    g = torch.Generator().manual_seed(1)
    independent = torch.randn(64, 4, generator=g, dtype=torch.float64)
    shared = 0.6 * torch.ones(64, 4, dtype=torch.float64) + 0.01 * torch.randn(64, 4, generator=g)
    grams = torch.stack([accumulate_gram(None, independent), accumulate_gram(None, shared)])
    heads = torch.zeros(2, 1, dtype=torch.float64)  # one free head per layer, always kept
    costs = LayerCosts(torch.tensor([0.0, 0.0]), torch.arange(5, dtype=torch.float64), 0.0, 0.0, "flops")
    _, diag_keep = search_masks(heads, fisher_diagonal(grams), costs, 4.0, resolution=4)
    head_values = block_sums(torch.zeros(2, 1, 1, dtype=torch.float64))
    _, block_keep = search_masks(head_values, block_sums(grams), costs, 4.0, resolution=4)

    def proxy(keep: torch.Tensor) -> float:
        return sum(float((~k).double() @ f @ (~k).double()) for k, f in zip(keep, grams, strict=True))

    assert diag_keep.sum(dim=1).tolist() == [4, 0]
    assert block_keep.sum(dim=1).tolist() == [2, 2]
    assert proxy(block_keep) < 0.9 * proxy(diag_keep)


def test_top_sums_golden() -> None:
    sums, order = top_sums(torch.tensor([[1.0, 3.0, 2.0]]))
    assert sums.tolist() == [[0.0, 3.0, 5.0, 6.0]] and order.tolist() == [[1, 2, 0]]


def _kwon_search_mac(
    heads: torch.Tensor, neurons: torch.Tensor, head_cost: float, neuron_cost: float, budget: float
) -> float:
    """Their `search_mac` (prune/search.py): global rank, every head count, neurons fill the rest."""
    h_sorted, n_sorted = (
        heads.flatten().sort(descending=True).values,
        neurons.flatten().sort(descending=True).values,
    )
    best = 0.0
    for count in range(1, heads.numel() + 1):
        n = max(int((budget - head_cost * count) / neuron_cost), 0)
        if head_cost * count > budget:
            break
        best = max(best, float(h_sorted[:count].sum() + n_sorted[:n].sum()))
    return best


def test_search_with_linear_costs_is_at_least_kwon_et_al_and_within_budget() -> None:
    g = torch.Generator().manual_seed(1)
    costs = LayerCosts(torch.arange(5.0) * 10, torch.arange(9.0) * 3, 0.0, 0.0, "flops")  # 4 heads, 8 neurons
    for budget in (20.0, 57.0, 101.0, 150.0):
        heads, neurons = torch.rand(3, 4, generator=g), torch.rand(3, 8, generator=g)
        keep_h, keep_n = search_masks(heads, neurons, costs, budget, resolution=int(budget))
        spent = costs.model_cost(keep_h.sum(1).tolist(), keep_n.sum(1).tolist())
        assert spent <= budget
        value = float(heads[keep_h].sum() + neurons[keep_n].sum())
        assert value >= _kwon_search_mac(heads, neurons, 10.0, 3.0, budget) - 1e-9


def test_search_is_exact_against_brute_force_with_layer_costs() -> None:
    # nonlinear per-layer costs and a fixed cost per kept layer: compare with every (h, n) per layer
    costs = LayerCosts(torch.tensor([0.0, 4, 5, 9]), torch.tensor([0.0, 2, 3, 3]), 2.0, 1.0, "s")
    heads = torch.tensor([[5.0, 1, 1], [0.5, 0.2, 0.1]])
    neurons = torch.tensor([[1.0, 1, 1], [4.0, 0.1, 0.1]])
    budget = 14.0
    best = 0.0
    for choice in itertools.product(range(4), range(4), range(4), range(4)):
        h0, n0, h1, n1 = choice
        if costs.model_cost([h0, h1], [n0, n1]) <= budget:
            sums = [top_sums(heads)[0][0, h0], top_sums(neurons)[0][0, n0]]
            sums += [top_sums(heads)[0][1, h1], top_sums(neurons)[0][1, n1]]
            best = max(best, float(sum(sums)))
    keep_h, keep_n = search_masks(heads, neurons, costs, budget, resolution=13)
    assert float(heads[keep_h].sum() + neurons[keep_n].sum()) == pytest.approx(best)
    assert keep_h[1].sum() == 0 and keep_n[1].sum() == 1  # layer 1 keeps its one valuable neuron
    assert costs.model_cost(keep_h.sum(1).tolist(), keep_n.sum(1).tolist()) <= budget


def test_search_drops_an_empty_layer_and_refuses_an_impossible_budget() -> None:
    costs = LayerCosts(torch.tensor([0.0, 1, 2]), torch.tensor([0.0, 1, 2]), 5.0, 0.0, "s")
    heads, neurons = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    keep_h, keep_n = search_masks(heads, neurons, costs, 9.0, resolution=9)
    assert keep_h[1].sum() == 0 and keep_n[1].sum() == 0  # nothing of value: the layer is dropped
    assert costs.model_cost(keep_h.sum(1).tolist(), keep_n.sum(1).tolist()) == 9.0
    with pytest.raises(PrunebertError, match="below the cheapest model"):
        search_masks(heads, neurons, costs, 5.5)


def test_flop_costs_golden() -> None:
    costs = flop_costs(hidden=4, heads=2, intermediate=3, seq_len=5)
    # per head: T (8 D d + 4 T d) = 5 (8*4*2 + 4*5*2) = 520; per neuron: 4 T D = 80
    assert costs.heads.tolist() == [0.0, 520.0, 1040.0] and costs.neurons.tolist() == [
        0.0,
        80.0,
        160.0,
        240.0,
    ]
    assert costs.dense_cost(2) == 2 * (1040 + 240)


def test_head_system_solves_an_exact_fit() -> None:
    g = torch.Generator().manual_seed(2)
    outputs = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)  # 3 heads, 7 tokens, 5 units
    truth = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    shift = torch.randn(7, 1, generator=g, dtype=torch.float64)  # per-token shift: LayerNorm removes it
    target = torch.einsum("k,kne->ne", truth, outputs) + shift
    ata, atb, btb = head_system(outputs, target)
    scales = solve_scales(ata, atb, damp=0.0)
    assert scales is not None and torch.allclose(scales, truth)
    assert relative_error(ata, atb, btb, scales) == pytest.approx(0.0, abs=1e-12)


def test_neuron_system_equals_the_explicit_design_matrix() -> None:
    g = torch.Generator().manual_seed(3)
    acts, weight = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    target = torch.randn(6, 5, generator=g)
    design = acts.double()[:, None, :] * weight.double()[None, :, :]  # (N, D, K): a_tj * w_ej
    design = (design - design.mean(dim=1, keepdim=True)).permute(2, 0, 1).flatten(1)  # centred over D
    ata, atb, btb = neuron_system(acts, weight, target)
    assert torch.allclose(ata, design @ design.T) and torch.allclose(
        atb, design @ center(target.double()).flatten()
    )
    assert float(btb) == pytest.approx(float(center(target.double()).pow(2).sum()))


def test_solve_scales_ridge_and_refusals() -> None:
    ata, atb = torch.eye(2, dtype=torch.float64), torch.tensor([3.0, 1.0], dtype=torch.float64)
    assert solve_scales(ata, atb, 0.0).tolist() == [3.0, 1.0]
    assert solve_scales(ata, atb, 1.0).tolist() == [2.0, 1.0]  # halfway back toward 1
    assert solve_scales(ata, torch.tensor([30.0, 1.0], dtype=torch.float64), 0.0) is None  # |s| > 10


def test_latency_table_costs_from_grid_golden() -> None:
    # 2 layers; attention 1 s per head per layer, FFN 0.5 s per 2 neurons, layer overhead 0.25, rest 1.0
    def model(h: int, n: int, layers: int = 2) -> float:
        return 1.0 + layers * (0.25 + h + 0.25 * n) if (h or n or layers) else 1.0

    table = LatencyTable(
        key={"shape": {"num_hidden_layers": 2}},
        head_grid=[0, 2, 4],
        head_s=[model(h, 4) for h in (0, 2, 4)],
        neuron_grid=[0, 4],
        neuron_s=[model(4, n) for n in (0, 4)],
        empty_s=model(0, 0),
        one_empty_s=model(0, 0, layers=1),
        baseline_s=2 * model(4, 4),
        seconds=0.0,
    )
    costs = table.costs()
    assert costs.heads.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert costs.neurons.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert costs.layer == pytest.approx(0.25) and costs.base == pytest.approx(1.0)
    assert costs.dense_cost(2) == pytest.approx(table.dense_s)
    assert grid(12, 7) == [0, 2, 4, 6, 8, 10, 12] and grid(3, 7) == [0, 1, 2, 3]
    assert _interpolate([0, 4], [0.0, 2.0], 4).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert isotonic([1.0, 3.0, 2.0, 4.0, 0.0]) == [1.0, 2.25, 2.25, 2.25, 2.25]
    assert isotonic([1.0, 2.0]) == [1.0, 2.0]
