"""Tasks from the Hugging Face hub (``glue/sst2``, ``imdb``, ``name:config``), with a table of GLUE tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from prunebert.assets import BUILTIN_TASKS
from prunebert.data.schema import Columns, RawSplit, RawTask, pick_columns
from prunebert.data.splits import carve, split_three
from prunebert.errors import PrunebertError

__all__ = ["GLUE_TASKS", "HubTask", "fetch_hub", "hub_load", "load_hub", "parse_hub_spec"]


@dataclass(frozen=True)
class HubTask:
    """How to read one known hub task: its text columns, metric, and the split used as test."""

    text: str
    text_pair: str | None
    metric: str
    validation: str = "validation"


# GLUE hides its test labels (-1), so its validation split is our test and dev is carved from train.
GLUE_TASKS: dict[str, HubTask] = {
    "cola": HubTask("sentence", None, "mcc"),
    "sst2": HubTask("sentence", None, "accuracy"),
    "mrpc": HubTask("sentence1", "sentence2", "f1"),
    "qqp": HubTask("question1", "question2", "f1"),
    "stsb": HubTask("sentence1", "sentence2", "pearson_spearman"),
    "mnli": HubTask("premise", "hypothesis", "accuracy", validation="validation_matched"),
    "qnli": HubTask("question", "sentence", "accuracy"),
    "rte": HubTask("sentence1", "sentence2", "accuracy"),
    "wnli": HubTask("sentence1", "sentence2", "accuracy"),
}
_GLUE_NAMES = ("glue", "nyu-mll/glue")


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``glue/sst2`` -> ("glue", "sst2"); ``name:config`` -> (name, config); anything else -> (spec, None)."""
    for glue in _GLUE_NAMES:
        if spec.startswith(glue + "/"):
            return glue, spec[len(glue) + 1 :]
    if ":" in spec:
        name, config = spec.split(":", 1)
        return name, config
    return spec, None


def hub_load(name: str, config: str | None) -> datasets.DatasetDict:
    """``datasets.load_dataset(name, config)``; a seam that tests replace."""
    return datasets.load_dataset(name, config)


def _short(e: Exception) -> str:
    """A one-line, short reason for an exception."""
    first = (str(e).strip().splitlines() or [""])[0]
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _columns_of(ds: datasets.Dataset, columns: Columns, where: str) -> RawSplit:
    """The canonical columns of one hub split as plain lists."""
    wanted = set(columns.mapping().values())  # others stay empty, but a missing-column error names them
    data: dict[str, list[Any]] = {c: list(ds[c]) if c in wanted else [] for c in ds.column_names}
    return pick_columns(data, columns, where)


def _label_names(ds: datasets.Dataset, label_column: str) -> list[str] | None:
    """Class names of a ClassLabel column, else None."""
    feature = ds.features.get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _has_labels(ds: datasets.Dataset, label_column: str) -> bool:
    """False for splits whose labels are hidden (all -1, as GLUE's test)."""
    return label_column in ds.column_names and any(v != -1 for v in ds[label_column])


def _arrange(
    dd: datasets.DatasetDict, validation: str, label_column: str, seed: int
) -> dict[str, datasets.Dataset | list[int]]:
    """Pick train/dev/test: a labelled hub split, or a seeded list of train row indices where none exists."""
    if "train" not in dd:
        raise PrunebertError(
            f"hub dataset has no train split (splits: {', '.join(dd)}); pass a local dataset"
        )
    n = len(dd["train"])
    has_test = "test" in dd and _has_labels(dd["test"], label_column)
    if has_test and validation in dd:
        return {"train": list(range(n)), "dev": dd[validation], "test": dd["test"]}
    if has_test or validation in dd:  # one labelled held-out split: it is test, dev is carved from train
        keep, dev = carve(n, 0.1, seed)
        return {"train": keep, "dev": dev, "test": dd["test"] if has_test else dd[validation]}
    train, dev, test = split_three(n, seed)
    return {"train": train, "dev": dev, "test": test}


def fetch_hub(spec: str) -> datasets.DatasetDict:
    """The hub dataset `spec` names; offline or unknown names raise a ``PrunebertError`` naming the others."""
    name, config = parse_hub_spec(spec)
    try:
        return hub_load(name, config)
    except Exception as e:
        raise PrunebertError(
            f"dataset {spec!r} is not built-in (built-ins: {', '.join(sorted(BUILTIN_TASKS))}), not a local "
            f"file, and could not be loaded from the hub ({_short(e)}); pass a local csv/tsv/jsonl path or a "
            f"built-in name"
        ) from e


def load_hub(spec: str, columns: Columns, seed: int, dd: datasets.DatasetDict | None = None) -> RawTask:
    """A labelled task from the hub (`dd`: already fetched with `fetch_hub`)."""
    name, config = parse_hub_spec(spec)
    dd = fetch_hub(spec) if dd is None else dd
    known = GLUE_TASKS.get(config or "") if name in _GLUE_NAMES else None
    if known is not None and columns.is_default:
        columns = Columns(known.text, known.text_pair, "label")
    parts = _arrange(dd, known.validation if known else "validation", columns.label, seed)
    train = _columns_of(dd["train"], columns, f"{spec} (train)")
    splits: dict[str, RawSplit] = {}
    for split, part in parts.items():
        if isinstance(part, list):
            splits[split] = {k: [v[i] for i in part] for k, v in train.items()}
        else:
            splits[split] = _columns_of(part, columns, f"{spec} ({split})")
    label_names = _label_names(dd["train"], columns.label)
    return RawTask(name=spec, splits=splits, label_names=label_names, metric=known.metric if known else None)
