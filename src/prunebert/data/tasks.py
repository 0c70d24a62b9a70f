"""Tasks: resolve a spec (built-in, local path, hub name) into train/dev/test.

Resolution order: a built-in name (``rotten-tomatoes``, ``reuters-r8``); an existing local path (a
csv/tsv/jsonl/json file, split 80/10/10 with the seed, or a directory with ``train.*``, optional
``dev.*``/``validation.*`` and ``test.*``); otherwise a hub name (``glue/sst2``, ``squad``, ``name:config``).
A classification or regression task ends up with columns ``text``, optionally ``text_pair``, and
``label`` (class id, or float32 for regression); an extractive QA task with those of
`prunebert.data.qa`. The kind is inferred (QA when the source has question, context and answers columns
and no label; regression for float labels) unless ``task_type`` names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from prunebert.assets import BUILTIN_TASKS
from prunebert.data.builtin import load_builtin
from prunebert.data.hub import fetch_hub, load_hub
from prunebert.data.local import SUFFIXES, load_local
from prunebert.data.qa import QA_METRIC, QAColumns, has_qa_columns, load_hub_qa, load_local_qa, local_columns
from prunebert.data.schema import Columns, RawTask, encode_labels
from prunebert.data.splits import subsample
from prunebert.errors import PrunebertError

__all__ = ["SPLITS", "TaskData", "TaskType", "load_task", "tokenize_task"]

SPLITS = ("train", "dev", "test")
TaskType = Literal["auto", "classification", "regression", "qa"]


@dataclass
class TaskData:
    """A labelled task: three splits with columns text, optionally text_pair, and label."""

    name: str
    train: datasets.Dataset
    dev: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str] | None  # None for regression and QA
    metric: str  # "accuracy" | "f1" | "mcc" | "pearson_spearman" | "squad"

    @property
    def kind(self) -> str:
        """ "classification", "regression" or "qa" (extractive question answering)."""
        if self.metric == QA_METRIC:
            return "qa"
        return "regression" if self.label_names is None else "classification"

    @property
    def num_labels(self) -> int:
        """Number of classes (1 for regression, 2 for QA: a start and an end logit per token)."""
        if self.kind == "qa":
            return 2
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        """Whether examples are text pairs."""
        return "text_pair" in self.train.column_names

    def splits(self) -> dict[str, datasets.Dataset]:
        """The three splits by name."""
        return {"train": self.train, "dev": self.dev, "test": self.test}


def _resolve(spec: str, columns: Columns, seed: int, kind: TaskType, qa: QAColumns) -> RawTask:
    """Find the task's source in resolution order and read it as plain lists."""
    if spec in BUILTIN_TASKS:
        if kind in ("qa", "regression"):
            raise PrunebertError(f"built-in task {spec!r} is a classification task; pass --task_type auto")
        return load_builtin(spec, seed)
    path = Path(spec).expanduser()
    if path.exists():
        if kind == "qa" or (kind == "auto" and has_qa_columns(local_columns(path), qa, columns.label)):
            return load_local_qa(path, qa, seed)
        return load_local(path, columns, seed)
    if path.suffix.lower() in SUFFIXES:
        raise PrunebertError(f"data file {spec} does not exist; check the path")
    dd = fetch_hub(spec)
    train_columns = dd["train"].column_names if "train" in dd else []
    if kind == "qa" or (kind == "auto" and has_qa_columns(train_columns, qa, columns.label)):
        return load_hub_qa(dd, spec, qa, seed)
    return load_hub(spec, columns, seed, dd)


def _qa_dataset(split: dict[str, list[Any]]) -> datasets.Dataset:
    """A QA split as a ``datasets.Dataset`` with fixed column types."""
    strings = {c: datasets.Value("string") for c in ("id", "question", "context")}
    features = {
        **strings,
        "answer_text": datasets.Sequence(datasets.Value("string")),
        "answer_start": datasets.Sequence(datasets.Value("int64")),
    }
    return datasets.Dataset.from_dict(split, features=datasets.Features(features))


def _dataset(split: dict[str, list[Any]], regression: bool) -> datasets.Dataset:
    """A split as a ``datasets.Dataset`` with fixed column types."""
    text_cols = [c for c in ("text", "text_pair") if c in split]
    features: dict[str, datasets.Value] = {c: datasets.Value("string") for c in text_cols}
    features["label"] = datasets.Value("float32" if regression else "int64")
    return datasets.Dataset.from_dict(split, features=datasets.Features(features))


def _finish(raw: RawTask, spec: str, kind: TaskType) -> TaskData:
    """Encode labels jointly over all splits, check no split is empty, and build the datasets."""
    for name in SPLITS:
        if not next(iter(raw.splits[name].values()), []):
            raise PrunebertError(
                f"the {name} split of {spec!r} is empty; pass more data or a directory with a {name} file"
            )
    if raw.metric == QA_METRIC:
        built = {k: _qa_dataset(raw.splits[k]) for k in SPLITS}
        return TaskData(raw.name, built["train"], built["dev"], built["test"], None, QA_METRIC)
    labels, names = encode_labels(
        {k: raw.splits[k]["label"] for k in SPLITS},
        repr(spec),
        label_names=raw.label_names,
        kind=None if kind == "auto" else kind,
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
    task_type: TaskType = "auto",
    qa_columns: QAColumns | None = None,
) -> TaskData:
    """Load a task by built-in name, local path or hub name; ``max_train_examples`` subsamples train only.

    ``task_type`` forces the kind (e.g. ``regression`` for integer scores); ``qa_columns`` names the
    columns of a QA source.
    """
    if max_train_examples is not None and max_train_examples < 1:
        raise PrunebertError(
            f"max_train_examples must be >= 1, got {max_train_examples}; pass a positive value"
        )
    columns = Columns(text_column, text_pair_column, label_column)
    raw = _resolve(spec, columns, seed, task_type, qa_columns or QAColumns())
    task = _finish(raw, spec, task_type)
    if max_train_examples is not None:
        task.train = task.train.select(subsample(len(task.train), max_train_examples, seed))
    return task


def tokenize_task(task: TaskData, tokenizer: Any, max_length: int) -> dict[str, datasets.Dataset]:
    """Tokenize every split (truncated to ``max_length``, unpadded) into model inputs plus ``labels``."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        pair = batch.get("text_pair")
        enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
        return {**enc, "labels": batch["label"]}

    if task.kind == "qa":
        raise ValueError("QA tasks are tokenized into windows by prunebert.data.qa_features.qa_features")
    out = {}
    for name, ds in task.splits().items():
        tok = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {name}")
        if task.label_names is None:
            tok = tok.cast_column("labels", datasets.Value("float32"))
        out[name] = tok
    return out
