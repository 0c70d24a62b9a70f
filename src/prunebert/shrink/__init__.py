"""Retraining-free structured pruning to a requested speed-up (Kwon et al. 2022), against measured latency.

`prunebert shrink MODEL --task TASK --speedup S` (or `--flops F`): Fisher scores of head and neuron masks
over calibration examples, a search under a FLOPs budget or a latency table of this machine, mask
rearrangement and least-squares tuning, then a slimmed model; see `prunebert.shrink.api`.
"""

from __future__ import annotations

from prunebert.shrink.api import ShrinkResult, ShrinkSettings, shrink
from prunebert.shrink.search import LayerCosts, flop_costs

__all__ = ["LayerCosts", "ShrinkResult", "ShrinkSettings", "flop_costs", "shrink"]
