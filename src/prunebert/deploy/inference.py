"""A saved model as an inference function: positional tensor inputs in, one tensor out.

Shared by export (ONNX, OpenVINO) and `prunebert bench`. The model is loaded through
`prunebert.models.load_model`, so anything it loads (built-in names, run directories, save_pretrained
directories, slimmed models) can be exported and timed. A checkpoint whose config names a
sequence-classification architecture keeps its classifier (output `logits`); any other is run as its
bare encoder (output `last_hidden_state`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from prunebert.errors import PrunebertError
from prunebert.models import Head, load_config, load_model, resolve_model_path

if TYPE_CHECKING:
    from prunebert.data import TaskData

__all__ = [
    "INPUT_NAMES",
    "InferenceModel",
    "TaskBatches",
    "TokenModel",
    "as_numpy",
    "example_inputs",
    "load_inference_model",
    "max_sequence_length",
    "refuse_compressed",
    "split_batches",
    "task_batches",
    "weight_bytes",
]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class TokenModel(nn.Module):
    """`forward(input_ids, attention_mask[, token_type_ids]) -> logits | last_hidden_state`."""

    def __init__(self, model: PreTrainedModel, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out: torch.Tensor = getattr(self.model(**kwargs, return_dict=True), self.output)
        return out


@dataclass
class InferenceModel:
    """A loaded model in eval mode, wrapped as a `TokenModel`, with what an exporter needs to know."""

    module: TokenModel
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    path: str
    input_names: tuple[str, ...]
    output_name: str
    new_head: bool

    def torch_inputs(self, arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        """Positional torch inputs, in `input_names` order, from named int64 arrays."""
        return tuple(torch.from_numpy(arrays[name]) for name in self.input_names)


def _is_classifier(config: PretrainedConfig) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


def load_inference_model(spec: str) -> InferenceModel:
    """Load `spec` for inference: its classifier if it was saved with one, else its encoder."""
    config = load_config(spec)
    refuse_compressed(spec)
    head: Head = "classification" if _is_classifier(config) else "base"
    loaded = load_model(spec, head)
    model = loaded.model.eval()
    accepted = inspect.signature(model.forward).parameters
    names = tuple(n for n in INPUT_NAMES if n in accepted)
    output = "logits" if head == "classification" else "last_hidden_state"
    return InferenceModel(
        TokenModel(model, output).eval(),
        loaded.tokenizer,
        model.config,
        loaded.path,
        names,
        output,
        loaded.new_head,
    )


def refuse_compressed(spec: str) -> None:
    """A directory written by `prunebert compress` must be decompressed before it can run."""
    from prunebert.deploy.storage import SUFFIX

    directory = Path(resolve_model_path(spec))
    if directory.is_dir() and any(directory.glob("*" + SUFFIX)):
        raise PrunebertError(
            f"{spec} holds compressed weights; run `prunebert decompress {spec} OUT` and use OUT"
        )


def max_sequence_length(config: PretrainedConfig) -> int:
    """Longest input the position embeddings allow (RoBERTa-style models reserve padding_idx + 1)."""
    limit = int(getattr(config, "max_position_embeddings", 512))
    if config.model_type in {"roberta", "xlm-roberta", "camembert"}:
        limit -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return limit


def example_inputs(
    config: PretrainedConfig, names: tuple[str, ...], batch: int, seq_len: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random token ids (no padding) of shape (batch, seq_len), as int64 arrays by input name."""
    if seq_len > max_sequence_length(config):
        raise PrunebertError(
            f"sequence length {seq_len} exceeds the model's {max_sequence_length(config)} positions; "
            "pass a smaller --seq-len"
        )
    rng = np.random.default_rng(seed)
    low = min(5, config.vocab_size - 1)  # past the usual special tokens
    arrays = {
        "input_ids": rng.integers(low, config.vocab_size, (batch, seq_len), dtype=np.int64),
        "attention_mask": np.ones((batch, seq_len), np.int64),
        "token_type_ids": np.zeros((batch, seq_len), np.int64),
    }
    return {name: arrays[name] for name in names}


def weight_bytes(spec: str) -> int | None:
    """Bytes of the model's weight files on disk (None for a hub name not stored locally)."""
    directory = Path(resolve_model_path(spec))
    if not directory.is_dir():
        return None
    files = [*directory.glob("*.safetensors"), *directory.glob("*.bin")]
    files = [f for f in files if not f.name.startswith("prunebert_")]  # masks and method state
    return sum(f.stat().st_size for f in files) if files else None


def as_numpy(value: Any) -> np.ndarray:
    """A runner's output (torch tensor, numpy array, or OpenVINO tensor) as a float32 numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().numpy()
    return np.asarray(value, dtype=np.float32)


@dataclass
class TaskBatches:
    """Tokenised, padded batches of one split of a task, with their labels and the task's metric."""

    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray
    metric: str
    num_labels: int


def task_batches(
    task: str,
    model: InferenceModel,
    split: str,
    limit: int | None,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
) -> TaskBatches:
    """The first `limit` examples of `split` of `task` (split with `seed` as fine-tuning does)."""
    from prunebert.data import load_task

    return split_batches(load_task(task, seed=seed), model, split, limit, batch_size, max_length)


def split_batches(
    data: TaskData,
    model: InferenceModel,
    split: str,
    limit: int | None,
    batch_size: int = 16,
    max_length: int = 128,
) -> TaskBatches:
    """The first `limit` examples of `split` of an already loaded task, tokenised by `model`."""
    rows = data.splits()[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        enc = model.tokenizer(
            chunk["text"],
            chunk.get("text_pair"),
            truncation=True,
            max_length=max_length,
            padding="longest",
            return_tensors="np",
        )
        shape = enc["input_ids"].shape
        batches.append(
            {
                n: np.asarray(enc[n], np.int64) if n in enc else np.zeros(shape, np.int64)
                for n in model.input_names
            }
        )
    return TaskBatches(batches, np.asarray(rows["label"]), data.metric, data.num_labels)
