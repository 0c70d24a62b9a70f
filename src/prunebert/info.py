"""`prunebert info`: overall and per-module sparsity of a saved model, read straight from its safetensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from prunebert.errors import PrunebertError
from prunebert.io import read_json
from prunebert.masks import MASKS_FILE, load_masks
from prunebert.model_files import weight_files
from prunebert.targets import ARCHITECTURES, ENCODER_ROLES

__all__ = ["checkpoint_info", "format_info"]


def _target_keys(directory: Path, keys: list[str]) -> dict[str, str]:
    """Targeted weight keys -> role: from the mask file if present, else the architecture's default roles."""
    if (directory / MASKS_FILE).is_file():
        masks, meta = load_masks(directory / MASKS_FILE)
        roles = meta.get("roles", {})
        by_suffix = {k.split(".", 1)[-1]: k for k in keys}
        found = {}
        for name in masks:
            key = name if name in keys else by_suffix.get(name.split(".", 1)[-1])
            if key is not None:
                found[key] = roles.get(name, "custom") if isinstance(roles, dict) else "custom"
        return found
    config = read_json(directory / "config.json", "model config", "save the model again")
    model_type = config.get("model_type", "") if isinstance(config, dict) else ""
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        return {}
    patterns = [
        (role, re.compile(arch.roles[role].removesuffix("$") + r"\.weight$")) for role in ENCODER_ROLES
    ]
    return {k: role for k in keys for role, p in patterns if p.search(k)}


def checkpoint_info(path: Path) -> dict[str, Any]:
    """Sparsity of the targeted modules (and parameter totals) of the model saved at `path`."""
    directory = path / "model" if (path / "model" / "config.json").is_file() else path
    modules: dict[str, dict[str, Any]] = {}
    total = zeros = 0
    try:
        for file in weight_files(directory, "pass a directory written by save_pretrained"):
            with safe_open(str(file), framework="pt") as f:
                keys = list(f.keys())
                targets = _target_keys(directory, keys)
                for key in keys:
                    tensor = f.get_tensor(key)
                    n, z = tensor.numel(), int((tensor == 0).sum().item())
                    total, zeros = total + n, zeros + z
                    if key in targets:
                        modules[key] = {"role": targets[key], "shape": list(tensor.shape), "sparsity": z / n}
    except (SafetensorError, OSError) as exc:
        raise PrunebertError(
            f"cannot read weights in {directory} ({exc}); the file is damaged or truncated"
        ) from None
    numel = {k: torch.Size(v["shape"]).numel() for k, v in modules.items()}
    pruned = sum(v["sparsity"] * numel[k] for k, v in modules.items())
    return {
        "path": str(directory),
        "has_masks": (directory / MASKS_FILE).is_file(),
        "target_sparsity": pruned / max(1, sum(numel.values())),
        "target_params": sum(numel.values()),
        "total_params": total,
        "total_zeros": zeros,
        "modules": modules,
    }


def format_info(info: dict[str, Any]) -> str:
    """A readable table of `checkpoint_info`."""
    lines = [
        f"model: {info['path']}  (masks: {'yes' if info['has_masks'] else 'no'})",
        f"targeted weights: {info['target_params']:,} params, sparsity {info['target_sparsity']:.2%}",
        f"all weights: {info['total_params']:,} params, {info['total_zeros']:,} zeros",
        "",
        f"{'module':<60} {'role':<17} {'shape':<12} sparsity",
    ]
    for key, m in info["modules"].items():
        shape = "x".join(map(str, m["shape"]))
        lines.append(f"{key:<60} {m['role']:<17} {shape:<12} {m['sparsity']:.2%}")
    return "\n".join(lines)
