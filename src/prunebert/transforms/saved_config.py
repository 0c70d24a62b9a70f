"""Reading back the config of a saved model, prunebert's custom-code model types included.

A model whose structure changed is saved with `model_type` `prunebert-<type>` (see
`prunebert.transforms.custom_code`); prunebert reads it as the plain transformers config it came from and
rebuilds the structure with its own code, never running the modeling file copied beside the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from prunebert.transforms.hf_modeling import CLASS_PREFIX, FAMILIES, MODEL_TYPE_PREFIX

__all__ = ["config_dict", "read_config"]


def config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """A config.json's content as the plain transformers config it was saved from (no-op for plain ones)."""
    model_type = str(config.get("model_type", ""))
    if not model_type.startswith(MODEL_TYPE_PREFIX):
        return config
    plain = {k: v for k, v in config.items() if k != "auto_map"}
    plain["model_type"] = model_type.removeprefix(MODEL_TYPE_PREFIX)
    plain["architectures"] = [a.removeprefix(CLASS_PREFIX) for a in config.get("architectures") or []]
    return plain


def read_config(path: str | Path, **kwargs: Any) -> PretrainedConfig:
    """The config of a model directory or hub name, `kwargs` applied; prunebert's own types read as plain."""
    raw, _ = PretrainedConfig.get_config_dict(str(path))
    plain = config_dict(raw)
    if plain is raw:
        config: PretrainedConfig = AutoConfig.from_pretrained(str(path), **kwargs)
    elif plain["model_type"] in FAMILIES:
        config = CONFIG_MAPPING[plain["model_type"]].from_dict(plain, **kwargs)
    else:
        raise ValueError(f"unknown model type {raw['model_type']!r}")
    config.name_or_path = str(path)  # where sentence-transformers modules are found (sentence_modules)
    return config
