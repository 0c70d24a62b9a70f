"""Classification/regression tasks: resolve a spec (built-in, local path, hub name) into train/dev/test.

Resolution order: a built-in name (``rotten-tomatoes``, ``reuters-r8``); an existing local path (a
csv/tsv/jsonl/json file, split 80/10/10 with the seed, or a directory with ``train.*``, optional
``dev.*``/``validation.*`` and ``test.*``); otherwise a hub name (``glue/sst2``, ``imdb``, ``name:config``).
Every task ends up with columns ``text``, optionally ``text_pair``, and ``label`` (class id, or float32
for regression).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from prunebert.assets import BUILTIN_TASKS
from prunebert.data.builtin import load_builtin
from prunebert.data.hub import load_hub
from prunebert.data.local import SUFFIXES, load_local
from prunebert.data.schema import Columns, RawTask, encode_labels
from prunebert.data.splits import subsample
from prunebert.errors import PrunebertError

__all__ = ["SPLITS", "TaskData", "load_task", "tokenize_task"]

SPLITS = ("train", "dev", "test")


@dataclass
class TaskData:
    """A labelled task: three splits with columns text, optionally text_pair, and label."""

    name: str
    train: datasets.Dataset
    dev: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str] | None  # None for regression
    metric: str  # "accuracy" | "f1" | "mcc" | "pearson_spearman"

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression)."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether examples are text pairs."""
        return "text_pair" in self.train.column_names

    def splits(self) -> dict[str, datasets.Dataset]:
        """The three splits by name."""
        return {"train": self.train, "dev": self.dev, "test": self.test}


def _resolve(spec: str, columns: Columns, seed: int) -> RawTask:
    """Find the task's source in resolution order and read it as plain lists."""
    if spec in BUILTIN_TASKS:
        return load_builtin(spec, seed)
    path = Path(spec).expanduser()
    if path.exists():
        return load_local(path, columns, seed)
    if path.suffix.lower() in SUFFIXES:
        raise PrunebertError(f"data file {spec} does not exist; check the path")
    return load_hub(spec, columns, seed)


def _dataset(split: dict[str, list[Any]], regression: bool) -> datasets.Dataset:
    """A split as a ``datasets.Dataset`` with fixed column types."""
    text_cols = [c for c in ("text", "text_pair") if c in split]
    features: dict[str, datasets.Value] = {c: datasets.Value("string") for c in text_cols}
    features["label"] = datasets.Value("float32" if regression else "int64")
    return datasets.Dataset.from_dict(split, features=datasets.Features(features))


def _finish(raw: RawTask, spec: str) -> TaskData:
    """Encode labels jointly over all splits, check no split is empty, and build the datasets."""
    for name in SPLITS:
        if not raw.splits[name]["text"]:
            raise PrunebertError(
                f"the {name} split of {spec!r} is empty; pass more data or a directory with a {name} file"
            )
    labels, names = encode_labels(
        {k: raw.splits[k]["label"] for k in SPLITS}, repr(spec), label_names=raw.label_names
    )
    regression = names is None
    built = {k: _dataset({**raw.splits[k], "label": labels[k]}, regression) for k in SPLITS}
    metric = "pearson_spearman" if regression else (raw.metric or "accuracy")
    return TaskData(raw.name, built["train"], built["dev"], built["test"], names, metric)


def load_task(
    spec: str,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    seed: int = 0,
    max_train_examples: int | None = None,
) -> TaskData:
    """Load a task by built-in name, local path or hub name; ``max_train_examples`` subsamples train only."""
    if max_train_examples is not None and max_train_examples < 1:
        raise PrunebertError(
            f"max_train_examples must be >= 1, got {max_train_examples}; pass a positive value"
        )
    task = _finish(_resolve(spec, Columns(text_column, text_pair_column, label_column), seed), spec)
    if max_train_examples is not None:
        task.train = task.train.select(subsample(len(task.train), max_train_examples, seed))
    return task


def tokenize_task(task: TaskData, tokenizer: Any, max_length: int) -> dict[str, datasets.Dataset]:
    """Tokenize every split (truncated to ``max_length``, unpadded) into model inputs plus ``labels``."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pair = batch.get("text_pair")
        enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        return {**enc, "labels": batch["label"]}

    out = {}
    for name, ds in task.splits().items():
        tok = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {name}")
        if task.label_names is None:
            tok = tok.cast_column("labels", datasets.Value("float32"))
        out[name] = tok
    return out
