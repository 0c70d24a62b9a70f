"""sentence-transformers modules (pooling, normalisation) kept when a pruned model is saved.

A sentence-transformers model directory is a transformers model plus `modules.json` (the module chain:
Transformer, Pooling, Normalize), `sentence_bert_config.json` (max_seq_length) and one folder per module
with a config (`1_Pooling/config.json`). A pruned model keeps them, so `SentenceTransformer(path)` (with
`trust_remote_code=True` where the structure changed) embeds as the source model did: copied from a source
directory that has them, written for the built-in models that are sentence-transformers models (the
built-in asset holds the transformer's files only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import PreTrainedModel

from prunebert import assets
from prunebert.io import write_json

__all__ = ["BUILTIN_SENTENCE_MODELS", "MODULES_FILE", "save_sentence_modules", "write_sentence_modules"]

MODULES_FILE = "modules.json"
_TOP_FILES = (MODULES_FILE, "sentence_bert_config.json", "config_sentence_transformers.json")
#: built-in name -> (pooling, L2-normalised, max_seq_length): minilm-l6 is sentence-transformers'
#: all-MiniLM-L6-v2 (mean pooling, normalised; the modules.json of its wheel)
BUILTIN_SENTENCE_MODELS = {"minilm-l6": ("mean", True, 256)}


def write_sentence_modules(
    directory: Path, dimension: int, pooling: str = "mean", normalize: bool = True, max_seq_length: int = 256
) -> None:
    """Write the modules of a Transformer -> Pooling (-> Normalize) sentence-transformers model."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (directory / "2_Normalize").mkdir(parents=True, exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    chosen = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}[pooling]
    write_json(
        directory / "1_Pooling" / "config.json",
        {"word_embedding_dimension": dimension, **{f"pooling_mode_{m}": m == chosen for m in modes}},
    )
    write_json(directory / MODULES_FILE, modules)
    write_json(
        directory / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False}
    )


def _copy_modules(source: Path, directory: Path) -> None:
    """Copy a sentence-transformers source's module files (the transformer's own are saved anew)."""
    for name in _TOP_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, directory / name)
    for module in json.loads((source / MODULES_FILE).read_text()):
        folder = str(module.get("path") or "")
        if folder and (source / folder).is_dir():
            shutil.copytree(source / folder, directory / folder, dirs_exist_ok=True)


def _builtin(source: Path) -> str | None:
    """The built-in model whose cached directory `source` is, if any (never fetches)."""
    cached = {(assets.cache_dir() / name).resolve(): name for name in BUILTIN_SENTENCE_MODELS}
    return cached.get(source.resolve())


def save_sentence_modules(model: PreTrainedModel, directory: Path) -> bool:
    """Give `directory` the sentence-transformers modules of the model's source, if it had any; whether."""
    source = Path(str(getattr(model, "name_or_path", "") or ""))
    if not str(source) or source.resolve() == directory.resolve():
        return False
    if (source / MODULES_FILE).is_file():
        _copy_modules(source, directory)
        return True
    builtin = _builtin(source)
    if builtin is None:
        return False
    pooling, normalize, max_seq_length = BUILTIN_SENTENCE_MODELS[builtin]
    write_sentence_modules(directory, model.config.hidden_size, pooling, normalize, max_seq_length)
    return True
