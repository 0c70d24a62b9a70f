"""Load encoders by built-in name, hub name or local path; save pruned ones so transformers loads them.

A prunebert model directory is an ordinary `save_pretrained` directory (safetensors weights with the
zeros baked in, config, tokenizer) plus `prunebert_masks.safetensors`, which carries the masks so a
later stage (fine-tuning after pre-training) keeps exactly the same pattern. A model whose structure
changed also carries its modeling code (`prunebert.transforms.custom_code`: transformers loads it with
`trust_remote_code=True` and refuses it without), and a sentence-transformers model keeps its pooling
modules (`prunebert.sentence_modules`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import transformers
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prunebert import assets
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE, load_masks
from prunebert.model_files import INDEX_FILE, WEIGHTS_FILE, align_keys, is_local_path
from prunebert.pruner import Pruner
from prunebert.sentence_modules import save_sentence_modules
from prunebert.targets import ARCHITECTURES
from prunebert.transforms import load_rebuilt, read_config, rebuilds, restore
from prunebert.transforms.custom_code import ship_modeling_code

__all__ = [
    "LoadedModel",
    "has_nsp_head",
    "load_model",
    "resolve_model_path",
    "save_pruned",
    "transfer_pruner",
]

Head = Literal["mlm", "classification", "qa", "pretraining", "base"]
#: head -> the Auto class that builds it ("pretraining": MLM + next-sentence prediction, original BERT)
AUTO_CLASSES = {
    "mlm": AutoModelForMaskedLM,
    "classification": AutoModelForSequenceClassification,
    "qa": AutoModelForQuestionAnswering,
    "pretraining": AutoModelForPreTraining,
    "base": AutoModel,
}
_NSP_ARCHITECTURES = ("BertForPreTraining", "BertForNextSentencePrediction")
_NSP_WEIGHT = "cls.seq_relationship.weight"


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from, and whether its task head was newly initialised."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: str
    new_head: bool


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report; prunebert says what matters (a new head) itself."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def resolve_model_path(spec: str) -> str:
    """Built-in name -> cached directory; prunebert run dir -> its `model/`; anything else unchanged."""
    if spec in assets.BUILTIN_MODELS:
        return str(assets.model_dir(spec))
    path = Path(spec).expanduser()
    if (path / "model" / "config.json").is_file():
        return str(path / "model")
    if is_local_path(spec) and not path.exists():
        raise PrunebertError(
            f"model path {spec} does not exist; pass an existing model directory, a hub name or a "
            f"built-in name ({', '.join(sorted(assets.BUILTIN_MODELS))})"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise PrunebertError(
            f"{spec} has no config.json; pass a directory written by save_pretrained or prunebert"
        )
    return spec


def load_config(spec: str) -> PretrainedConfig:
    """The model's config, checked to be a supported encoder before any weights are read."""
    path = resolve_model_path(spec)
    try:
        config = read_config(path)
    except (OSError, ValueError) as exc:
        builtins = ", ".join(sorted(assets.BUILTIN_MODELS))
        raise PrunebertError(
            f"could not load model {spec!r} ({str(exc).splitlines()[0][:120]}); pass a local model "
            f"directory, a reachable hub name, or a built-in name ({builtins})"
        ) from None
    if config.model_type not in ARCHITECTURES:
        raise PrunebertError(
            f"model {spec!r} is a {config.model_type!r} model, not a supported encoder; use one of the "
            f"BERT family ({', '.join(sorted(ARCHITECTURES))})"
        )
    return config


def has_nsp_head(spec: str) -> bool:
    """Whether a BERT checkpoint has a next-sentence-prediction head (its config or its weights say so)."""
    config = load_config(spec)
    if config.model_type != "bert":
        return False
    if any(a in _NSP_ARCHITECTURES for a in config.architectures or []):
        return True
    path = Path(resolve_model_path(spec))
    index = path / INDEX_FILE
    if index.is_file():
        return _NSP_WEIGHT in json.loads(index.read_text()).get("weight_map", {})
    if not (path / WEIGHTS_FILE).is_file():
        return False
    with _damaged(spec, "weights"), safe_open(str(path / WEIGHTS_FILE), "pt") as weights:
        return _NSP_WEIGHT in weights.keys()  # noqa: SIM118 -- safe_open has no __contains__


def load_model(spec: str, head: Head, num_labels: int | None = None) -> LoadedModel:
    """Load `spec` with the given head; `num_labels=1` makes a regression head.

    Transforms recorded in the config come back (`prunebert.transforms`): slimmed and factorised
    modules are rebuilt, fixed attention patterns and skipped layers re-applied.
    """
    config = load_config(spec)
    path = resolve_model_path(spec)
    kwargs: dict[str, Any] = {}
    if head == "classification":
        existing = config.num_labels if "classification" in _architectures(config) else None
        if existing is not None and num_labels is not None and existing != num_labels:
            raise PrunebertError(
                f"model {spec!r} has a {existing}-label classifier but the task has {num_labels} labels; "
                "start from the encoder before fine-tuning, or evaluate on a task with the same labels"
            )
        kwargs = {"num_labels": num_labels or config.num_labels}
        if num_labels == 1:
            kwargs["problem_type"] = "regression"
    _refuse_pickles(spec, Path(path))
    with _quiet_transformers(), _damaged(spec, "weights"):
        if rebuilds(config):  # structure changed: transformers cannot size it
            model, missing = load_rebuilt(path, AUTO_CLASSES[head], **kwargs)
            info = {"missing_keys": missing}
        else:  # safetensors only: never unpickle a user's file; the plain config of a custom-code model
            model, info = AUTO_CLASSES[head].from_pretrained(
                path, config=read_config(path, **kwargs), output_loading_info=True, use_safetensors=True
            )
    restore(model)
    with _quiet_transformers(), _damaged(spec, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)  # plain: never asks to run code
    _check_tokenizer(spec, tokenizer, model.config)
    prefix = model.base_model_prefix
    new_head = any(not k.startswith(prefix + ".") and k.split(".")[0] != prefix for k in info["missing_keys"])
    return LoadedModel(model, tokenizer, path, new_head)


def _check_tokenizer(spec: str, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig) -> None:
    """The tokenizer must fit the model: more than its special tokens (transformers builds a bare one when
    the tokenizer files are missing) and no id past the model's embeddings."""
    size, vocab = len(tokenizer), int(getattr(config, "vocab_size", 0) or 0)
    if size <= len(set(tokenizer.all_special_ids)):
        raise PrunebertError(
            f"model {spec!r} has no usable tokenizer ({size} tokens, all special: its tokenizer files are "
            "missing); save the tokenizer beside the model (tokenizer.save_pretrained(DIR))"
        )
    if vocab and size > vocab:
        raise PrunebertError(
            f"the tokenizer of model {spec!r} has {size} tokens but the model's embeddings hold {vocab}; "
            "save the model's own tokenizer beside it"
        )


def _refuse_pickles(spec: str, directory: Path) -> None:
    """A local model with only pickled weights is refused: unpickling a user's file can run code."""
    safe = any((directory / name).is_file() for name in (WEIGHTS_FILE, INDEX_FILE))
    pickled = sorted(p.name for p in directory.glob("pytorch_model*.bin")) if directory.is_dir() else []
    if pickled and not safe:
        raise PrunebertError(
            f"model {spec!r} has only pickled weights ({pickled[0]}); prunebert reads safetensors only: "
            "convert it once with from_pretrained(...).save_pretrained(..., safe_serialization=True)"
        )


@contextlib.contextmanager
def _damaged(spec: str, what: str) -> Iterator[None]:
    """A truncated, corrupt or missing file while loading becomes a one-line error naming the model."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise PrunebertError(
            f"cannot load the {what} of model {spec!r} ({detail}); the files are damaged or incomplete: "
            "save the model again or pass another one"
        ) from None


def _architectures(config: PretrainedConfig) -> str:
    return " ".join(config.architectures or []).lower().replace("sequenceclassification", "classification")


def transfer_pruner(model: PreTrainedModel, path: str, pruning: PruningConfig | None) -> Pruner | None:
    """The pruner a stage starts with: the checkpoint's masks kept fixed, extended by `pruning` if given
    (its targets start from their transferred masks and may only add zeros; every other transferred
    mask stays fixed beside them)."""
    mask_file = Path(path) / MASKS_FILE
    if not mask_file.is_file():
        return Pruner(model, pruning) if pruning is not None else None
    masks, _ = load_masks(mask_file)
    masks = align_keys(masks, {n for n, _ in model.named_parameters()}, model.base_model_prefix)
    if pruning is None:
        names = [re.escape(key.removesuffix(".weight")) + "$" for key in masks]
        pruning = PruningConfig(schedule="fixed", targets=names, sparsity=0.0)
    pruner = Pruner(model, pruning)
    pruner.keep_fixed(masks, source=str(mask_file))
    pruner.sparsity = pruner.overall_sparsity()
    pruner.enforce()
    return pruner


def save_pruned(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pruner: Pruner | None, directory: Path
) -> None:
    """Bake the masks and save a transformers model (+ tokenizer, + masks for later stages).

    A changed structure ships its modeling code; a sentence-transformers source keeps its modules.
    """
    if pruner is not None:
        pruner.bake()
    model.save_pretrained(directory, safe_serialization=True)
    ship_modeling_code(directory)
    save_sentence_modules(model, directory)
    tokenizer.save_pretrained(directory)
    if pruner is not None:
        pruner.save(directory, with_method_state=False)
