"""A saved model whose structure changed carries its own modeling code (transformers' custom-code route).

Where a model's config records a transform that plain transformers would not rebuild (slimmed heads /
FFN widths / layers, low-rank factors, skipped layers, fixed attention), `ship_modeling_code` turns the
saved directory into a custom-code model:

- `modeling_prunebert.py`: `prunebert/transforms/hf_modeling.py` copied verbatim (torch + transformers
  only), which rebuilds that structure from the config's `prunebert_*` entries;
- `config.json`: `model_type` `prunebert-<type>`, unknown to transformers, so loading without
  `trust_remote_code=True` fails with transformers' own error instead of loading wrong weights;
  `auto_map` naming the classes of that file; `architectures` renamed to them.

`prunebert.transforms.saved_config.read_config` reads it back as a plain config. Models whose shapes did
not change stay plain checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import transformers

from prunebert.io import write_json
from prunebert.transforms.fixed_attention import CONFIG_KEY as FIXED_KEY
from prunebert.transforms.hf_modeling import CLASS_PREFIX, FAMILIES, HEADS, MODEL_TYPE_PREFIX
from prunebert.transforms.layer_skip import SKIP_KEY
from prunebert.transforms.lowrank import LOWRANK_KEY
from prunebert.transforms.slim import SLIM_KEY

__all__ = ["MODELING_FILE", "SOURCE", "STRUCTURE_KEYS", "needs_modeling_code", "ship_modeling_code"]

MODELING_FILE = "modeling_prunebert.py"
SOURCE = Path(__file__).with_name("hf_modeling.py")
#: config entries that make plain transformers build or run the model wrongly
STRUCTURE_KEYS = (SLIM_KEY, LOWRANK_KEY, SKIP_KEY, FIXED_KEY)


def needs_modeling_code(config: dict[str, Any]) -> bool:
    """Whether a config (as saved in config.json) records a structure transformers cannot rebuild."""
    return any(isinstance(config.get(key), dict) for key in STRUCTURE_KEYS)


def _auto_map(base_type: str) -> dict[str, str]:
    """AutoConfig and every Auto class the family has, pointing into `modeling_prunebert.py`."""
    stem, module = FAMILIES[base_type][0], MODELING_FILE.removesuffix(".py")
    auto_map = {"AutoConfig": f"{module}.{CLASS_PREFIX}{stem}Config"}
    for head, auto in HEADS.items():
        if hasattr(transformers, stem + head):  # RoBERTa and DistilBERT have no pre-training head
            auto_map[auto] = f"{module}.{CLASS_PREFIX}{stem}{head}"
    return auto_map


def ship_modeling_code(directory: Path) -> bool:
    """Make the model saved in `directory` a custom-code model if its structure changed; returns whether."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    base_type = str(config.get("model_type", "")).removeprefix(MODEL_TYPE_PREFIX)
    if not needs_modeling_code(config) or base_type not in FAMILIES:
        (directory / MODELING_FILE).unlink(missing_ok=True)  # a plain checkpoint (again)
        return False
    shutil.copyfile(SOURCE, directory / MODELING_FILE)
    config["model_type"] = MODEL_TYPE_PREFIX + base_type
    config["auto_map"] = _auto_map(base_type)
    config["architectures"] = [
        name if name.startswith(CLASS_PREFIX) else CLASS_PREFIX + name
        for name in config.get("architectures") or []
    ]
    write_json(path, config)
    return True
