"""Tiny randomly initialised encoders built from configs: the models of the unit tests (never downloaded)."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

SIZES = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2}
DISTIL_SIZES = {"dim": 32, "n_heads": 4, "hidden_dim": 64, "n_layers": 2}


def tiny_config(model_type: str = "bert", vocab_size: int = 128, **extra: object) -> PretrainedConfig:
    """A 2-layer, 32-wide config of `model_type`."""
    sizes = DISTIL_SIZES if model_type == "distilbert" else SIZES
    kwargs = {"vocab_size": vocab_size, "max_position_embeddings": 64, **sizes, **extra}
    if model_type == "electra":
        kwargs["embedding_size"] = 32
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_classifier(model_type: str = "bert", num_labels: int = 2, seed: int = 0) -> PreTrainedModel:
    """A tiny sequence classifier with seeded random weights."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_labels=num_labels))


def tiny_mlm(model_type: str = "bert", seed: int = 0) -> PreTrainedModel:
    """A tiny masked-LM with seeded random weights."""
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(tiny_config(model_type))
