"""`shrink(model, batches, costs, budget)`: retraining-free structured pruning of a fine-tuned model.

The steps of Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers"), mapped:
1. mask gradients and their Fisher information (their `collect_mask_grads`, `compute_fisher_info`):
   `gates.mask_grams` (per-example gradients, Gram matrix per layer), `maths.fisher_diagonal`;
2. the mask search under a FLOPs or latency budget (`search_mac` / `search_latency`):
   `search.search_masks`, exact over per-layer counts, against `LayerCosts`;
3. mask rearrangement (`rearrange_mask`): `maths.rearrange_masks`;
4. mask tuning by layer-wise least squares (`rescale_mask`): `tune.tune_scales`, matching the dense
   model's layers (they match a less-pruned mask's); or, the default, K-prune's sublayer-wise weight
   tuning (Park et al., ICLR 2024): `tune.tune_weights` refits every kept column of the output
   projections and their biases by the same layer-wise least squares, not one scale per group;
5. what the paper leaves as masks becomes a model: scales folded into the output projections
   (`gates.fold_scales`), then `ShrinkResult.slim()` cuts it with `prunebert.transforms.slim`, dropping
   the layers left with no head and no neuron.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from prunebert.errors import PrunebertError
from prunebert.shrink.gates import Batch, LayerGroups, fold_scales, layer_groups, layer_inputs, mask_grams
from prunebert.shrink.maths import block_sums, fisher_diagonal, rearrange_masks
from prunebert.shrink.search import LayerCosts, kept_counts, search_masks
from prunebert.shrink.tune import tune_scales, tune_weights
from prunebert.transforms.lowrank import has_lowrank
from prunebert.transforms.slim import is_slim, plan_slim, slim_model

__all__ = ["Scores", "ShrinkResult", "ShrinkSettings", "Tuning", "shrink"]

Tuning = Literal["weights", "scales", "none"]
Scores = Literal["block", "diagonal"]


@dataclass(frozen=True)
class ShrinkSettings:
    """How `shrink` runs: ridge of the least squares, which steps, search resolution."""

    damp: float = 1e-2  # ridge toward the trained weights / scale 1, relative to the mean diagonal of A^T A
    scores: Scores = "block"  # each layer's Fisher block, greedily (maths.block_sums), or its diagonal
    rearrange: bool = True
    tune: Tuning = "weights"  # refit kept output columns, one scale per group (Kwon et al.), or none
    resolution: int = 2000  # budget units of the search
    first_token_last: bool | None = None  # match only the first token at the last layer; None: classifiers


@dataclass
class ShrinkResult:
    """The pruned model (scales folded in, pruned columns zero, not yet cut) and how it was chosen."""

    model: PreTrainedModel
    keep_heads: torch.Tensor  # (L, H) bool
    keep_neurons: torch.Tensor  # (L, F) bool
    head_scales: torch.Tensor  # (L, H)
    neuron_scales: torch.Tensor  # (L, F)
    drop_layers: list[int]
    budget: float
    predicted_cost: float
    dense_cost: float
    unit: str
    fisher_kept: dict[str, float]
    tuning: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    grams: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # to search again

    def slim(self) -> PreTrainedModel:
        """Cut the model to what is kept, in place (`prunebert.transforms.slim`), and return it."""
        return slim_model(self.model, plan_slim(self.model, self.drop_layers))

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record of the choice."""
        heads, neurons = kept_counts(self.keep_heads, self.keep_neurons)
        return {
            "heads_kept": heads,
            "neurons_kept": neurons,
            "layers_dropped": self.drop_layers,
            "budget": self.budget,
            "predicted_cost": self.predicted_cost,
            "dense_cost": self.dense_cost,
            "predicted_ratio": self.dense_cost / self.predicted_cost,
            "unit": self.unit,
            "fisher_kept": self.fisher_kept,
            "tuning": self.tuning,
            "seconds": self.seconds,
        }


def _first_token_last(model: PreTrainedModel, settings: ShrinkSettings) -> bool:
    if settings.first_token_last is not None:
        return settings.first_token_last
    return any(a.endswith("ForSequenceClassification") for a in model.config.architectures or [])


def _fraction_kept(scores: torch.Tensor, keep: torch.Tensor) -> float:
    total = float(scores.sum())
    return float(scores[keep].sum()) / total if total > 0 else 1.0


def shrink(
    model: PreTrainedModel,
    batches: Sequence[Batch],
    costs: LayerCosts,
    budget: float,
    settings: ShrinkSettings | None = None,
    grams: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ShrinkResult:
    """Prune `model` (in place) to `budget` in the unit of `costs`, with no training; see the module doc.

    `batches`: tokenised training examples with `labels` (2,048 in the paper), on the model's device.
    `grams`: the mask-gradient Gram matrices of an earlier result of the same model and batches
    (`ShrinkResult.grams`), to search another budget without the gradient passes.
    Call `.slim()` on the result for the smaller model.
    """
    settings = settings or ShrinkSettings()
    if is_slim(model.config) or has_lowrank(model.config):
        raise PrunebertError("shrink starts from a fine-tuned, unpruned model; this one is already slimmed")
    groups = layer_groups(model)
    training = model.training
    model.eval()  # dropout off: the calibration passes must see the deployed function
    try:
        return _shrink(model, groups, batches, costs, budget, settings, grams)
    finally:
        model.train(training)


def _shrink(
    model: PreTrainedModel,
    groups: list[LayerGroups],
    batches: Sequence[Batch],
    costs: LayerCosts,
    budget: float,
    settings: ShrinkSettings,
    grams: tuple[torch.Tensor, torch.Tensor] | None,
) -> ShrinkResult:
    clock: dict[str, float] = {}
    start = time.perf_counter()
    head_grams, neuron_grams = grams if grams is not None else mask_grams(model, groups, batches)
    clock["fisher"] = time.perf_counter() - start
    head_fisher, neuron_fisher = fisher_diagonal(head_grams), fisher_diagonal(neuron_grams)
    block = settings.scores == "block"
    head_values = block_sums(head_grams) if block else head_fisher
    neuron_values = block_sums(neuron_grams) if block else neuron_fisher
    keep_heads, keep_neurons = search_masks(head_values, neuron_values, costs, budget, settings.resolution)
    if settings.rearrange:
        keep_heads = rearrange_masks(keep_heads, head_grams)
        keep_neurons = rearrange_masks(keep_neurons, neuron_grams)
    clock["search"] = time.perf_counter() - start - clock["fisher"]
    tuning: list[dict[str, Any]] = []
    head_scales, neuron_scales = keep_heads.float(), keep_neurons.float()
    if settings.tune != "none":
        calls = layer_inputs(model, batches)
        first = _first_token_last(model, settings)
        if settings.tune == "scales":
            head_scales, neuron_scales, tuning = tune_scales(
                model, groups, calls, keep_heads, keep_neurons, settings.damp, first
            )
        else:
            tuning = tune_weights(model, groups, calls, keep_heads, keep_neurons, settings.damp, first)
    clock["tune"] = time.perf_counter() - start - clock["fisher"] - clock["search"]
    fold_scales(model, groups, head_scales, neuron_scales)
    heads, neurons = kept_counts(keep_heads, keep_neurons)
    return ShrinkResult(
        model=model,
        keep_heads=keep_heads,
        keep_neurons=keep_neurons,
        head_scales=head_scales,
        neuron_scales=neuron_scales,
        drop_layers=[i for i, (h, n) in enumerate(zip(heads, neurons, strict=True)) if h == n == 0],
        budget=budget,
        predicted_cost=costs.model_cost(heads, neurons),
        dense_cost=costs.dense_cost(len(groups)),
        unit=costs.unit,
        fisher_kept={
            "heads": _fraction_kept(head_fisher, keep_heads),
            "neurons": _fraction_kept(neuron_fisher, keep_neurons),
        },
        tuning=tuning,
        seconds=clock,
        grams=(head_grams, neuron_grams),
    )
