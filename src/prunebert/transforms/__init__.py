"""Model transforms recorded in `config.json`: slim, low-rank, layer skip, fixed attention.

A loaded model gets them back in one place: `rebuilds(config)` says whether its shapes differ from what
transformers would build (slimmed or factorised: load it with `load_rebuilt`), and `restore(model)`
re-applies the forward-time ones (fixed attention heads, skipped layers) to a loaded model; `read_config`
reads the config of such a model, which is saved with its own modeling code (`custom_code`) for use
outside prunebert.
"""

from __future__ import annotations

from transformers import PretrainedConfig, PreTrainedModel

from prunebert.transforms.fixed_attention import restore_fixed_attention
from prunebert.transforms.layer_skip import restore_skipped_layers
from prunebert.transforms.lowrank import has_lowrank
from prunebert.transforms.saved_config import read_config
from prunebert.transforms.slim import is_slim, load_slim_with_info

__all__ = ["load_rebuilt", "read_config", "rebuilds", "restore"]

load_rebuilt = load_slim_with_info


def rebuilds(config: PretrainedConfig) -> bool:
    """Whether `config` records a changed structure (slimmed or factorised) transformers cannot size."""
    return is_slim(config) or has_lowrank(config)


def restore(model: PreTrainedModel) -> None:
    """Re-apply the transforms recorded in a loaded model's config (fixed attention, skipped layers)."""
    restore_fixed_attention(model)
    restore_skipped_layers(model)
