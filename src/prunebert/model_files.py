"""What a model directory holds and what a model name means: the one place that knows.

- `weight_files`: the safetensors files of a saved model (one file, or the shards its index names);
- `is_local_path`: whether a model name is a local path or a hub id (`org/name`);
- `align_keys`: saved state-dict keys matched to a model with or without a task head (a headless
  encoder saves `encoder.layer...`, a headed one `bert.encoder.layer...`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TypeVar

from prunebert.errors import PrunebertError
from prunebert.io import read_json

__all__ = ["COMPRESSED_SUFFIX", "INDEX_FILE", "WEIGHTS_FILE", "align_keys", "is_local_path", "weight_files"]

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
V = TypeVar("V")


#: the weight files `prunebert compress` writes (`prunebert.deploy.storage`); a model must be decompressed
COMPRESSED_SUFFIX = ".prunebert-sparse.safetensors"


def weight_files(directory: Path, fix: str | None = None) -> list[Path]:
    """The weight files of a saved model; none: [] if `fix` is None, else a one-line error naming `fix`."""
    index = directory / INDEX_FILE
    if index.is_file():
        data = read_json(index, "weight index", "save the model again")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise PrunebertError(f"weight index {index} has no weight_map; save the model again")
        return [directory / str(s) for s in sorted(set(weight_map.values()))]
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    if fix is None:
        return []
    if any(directory.glob("*" + COMPRESSED_SUFFIX)):
        raise PrunebertError(
            f"{directory} holds compressed weights; run `prunebert decompress {directory} OUT` and use OUT"
        )
    raise PrunebertError(f"no {WEIGHTS_FILE} in {directory}; {fix}")


def is_local_path(spec: str) -> bool:
    """Whether `spec` can only be a local path (absolute, `./`, `~`, or more than one `/`), not a hub id."""
    return Path(spec).expanduser().is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1


def align_keys(state: Mapping[str, V], names: Collection[str], base_prefix: str) -> dict[str, V]:
    """`state` with each key that `names` lacks matched to the name with or without `base_prefix.`."""
    prefix = base_prefix + "."
    aligned = {}
    for key, value in state.items():
        if key not in names and prefix + key in names:  # saved headless, loaded with a head
            key = prefix + key
        elif key not in names and key.removeprefix(prefix) in names:  # saved with a head, loaded headless
            key = key.removeprefix(prefix)
        aligned[key] = value
    return aligned
