"""The column contract every task source is brought to (text, optional text_pair, label) and its checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunebert.errors import PrunebertError

__all__ = [
    "Columns",
    "RawSplit",
    "RawTask",
    "check_labels_present",
    "clean_labels",
    "encode_labels",
    "pick_columns",
]

RawSplit = dict[str, list[Any]]
"""One split as plain column lists: "text", optionally "text_pair", and "label"."""

_OPTION = {
    "text": "--text_column",
    "text_pair": "--text_pair_column",
    "label": "--label_column",
}


@dataclass(frozen=True)
class Columns:
    """Which source columns hold the text, the optional second text, and the label."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"

    def mapping(self) -> dict[str, str]:
        """Canonical column name -> source column name."""
        pairs = {"text": self.text, "text_pair": self.text_pair, "label": self.label}
        return {canon: src for canon, src in pairs.items() if src is not None}

    @property
    def is_default(self) -> bool:
        """Whether these are the defaults (so a known hub table may choose the columns instead)."""
        return self == Columns()


@dataclass
class RawTask:
    """A task as plain column lists per split, before label encoding; ``metric`` None means inferred."""

    name: str
    splits: dict[str, RawSplit]
    label_names: list[str] | None = None  # fixes the class order for string or ClassLabel labels
    metric: str | None = None


def _row(i: int, where: str, lines: Sequence[int] | None) -> str:
    """Where row `i` (0-based) is: its line in the file when known, else its row number."""
    return f"line {lines[i]} of {where}" if lines is not None else f"row {i + 1} of {where}"


def pick_columns(
    data: dict[str, list[Any]], columns: Columns, where: str, lines: Sequence[int] | None = None
) -> RawSplit:
    """Select and rename the source columns to the canonical ones, checking they exist and hold text
    (`lines`: each row's line in the file, for errors)."""
    out: RawSplit = {}
    for canon, src in columns.mapping().items():
        if src not in data:
            avail = ", ".join(data) or "none"
            raise PrunebertError(
                f"{canon.replace('_', ' ')} column {src!r} not in {where} (columns: {avail}); "
                f"pass {_OPTION[canon]} NAME"
            )
        out[canon] = data[src]
    for canon in ("text", "text_pair"):
        if canon in out:
            out[canon] = _as_texts(out[canon], columns.mapping()[canon], where, lines)
    if "label" in out:
        out["label"] = clean_labels(out["label"])
    return out


def _as_texts(values: list[Any], column: str, where: str, lines: Sequence[int] | None) -> list[str]:
    """The values as strings; a missing value is an error naming its row."""
    for i, v in enumerate(values):
        if v is None:
            raise PrunebertError(f"{_row(i, where, lines)} has no {column!r}; fill it in or drop the row")
    return [v if isinstance(v, str) else str(v) for v in values]


def clean_labels(values: Sequence[Any]) -> list[Any]:
    """Labels as every reader gives them: strings stripped of surrounding white space (" pos" is "pos")."""
    return [v.strip() if isinstance(v, str) else v for v in values]


def check_labels_present(values: Sequence[Any], where: str, lines: Sequence[int] | None = None) -> None:
    """Every label must be given and, if a number, finite; a bad one is an error naming its line or row."""
    for i, v in enumerate(values):
        if v is None or v == "":
            raise PrunebertError(f"{_row(i, where, lines)} has an empty label; fill it in or drop the row")
        if isinstance(v, float) and not math.isfinite(v):
            raise PrunebertError(
                f"{_row(i, where, lines)} has the label {v}, not a finite number; fix it or drop the row"
            )


def _label_kind(values: Sequence[Any], where: str) -> str:
    """'str', 'int' or 'float' for a list of labels; anything else raises a ``PrunebertError``."""
    kinds = {_kind(v) for v in values}
    if kinds <= {"str"} or kinds <= {"int"}:
        return kinds.pop() if kinds else "str"
    if kinds <= {"int", "float"}:
        return "float"
    found = ", ".join(sorted(kinds))
    raise PrunebertError(
        f"labels in {where} must be all strings or all integers (floats for regression), found {found}; "
        f"fix the label values or pass --label_column NAME"
    )


def _kind(v: Any) -> str:
    """'str', 'int', 'float' or 'other' (bools are not labels)."""
    if isinstance(v, str):
        return "str"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "other"
    return "int" if isinstance(v, int) else "float"


def encode_labels(
    splits: dict[str, list[Any]],
    where: str,
    label_names: list[str] | None = None,
    kind: str | None = None,
) -> tuple[dict[str, list[Any]], list[str] | None]:
    """Labels of all splits as class ids (or floats for regression) plus class names (None: regression).

    Strings map to ids in ``label_names`` order (default: sorted); integers 0..K-1 are kept, other integer
    sets are mapped in sorted order; a mix of integers and floats means regression. ``kind``
    ("classification" / "regression") overrides that inference: integer scores as a regression, or
    whole-number floats (1.0) as classes.
    """
    splits = {split: clean_labels(values) for split, values in splits.items()}
    for split, values in splits.items():
        check_labels_present(values, f"{where} ({split})")
    every = [v for values in splits.values() for v in values]
    found = _label_kind(every, where)
    if kind == "regression" and found == "str":
        raise PrunebertError(
            f"labels in {where} are strings, not numbers, so they cannot be a regression target; "
            "pass --task_type classification or fix the labels"
        )
    if kind == "classification" and found == "float":
        if any(float(v) != int(v) for v in every):
            raise PrunebertError(
                f"labels in {where} include fractional numbers, which are not classes; "
                "pass --task_type regression or fix the labels"
            )
        splits = {k: [int(v) for v in vals] for k, vals in splits.items()}
        every, found = [int(v) for v in every], "int"
    if kind == "regression" or found == "float":
        return {k: [float(v) for v in vals] for k, vals in splits.items()}, None
    names, index = (
        _int_index(every, where, label_names) if found == "int" else _str_index(every, where, label_names)
    )
    if len(names) < 2:
        raise PrunebertError(
            f"labels in {where} have one class only ({names[0]!r}); a classifier needs two or more: fix the "
            "labels, or pass --task_type regression for numeric scores"
        )
    return {k: [index[v] for v in vals] for k, vals in splits.items()}, names


def _int_index(labels: list[int], where: str, names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """Class names and label -> id for integer labels (ids of a known class list are kept as they are)."""
    if min(labels) < 0:
        raise PrunebertError(
            f"labels in {where} include {min(labels)} (hidden test labels?); class ids must be >= 0, "
            f"so pass data with real labels"
        )
    ids = sorted(set(labels))
    if names is None:
        return [str(i) for i in ids], {v: i for i, v in enumerate(ids)}
    if ids[-1] >= len(names):
        raise PrunebertError(
            f"label {ids[-1]} in {where} is not an id of the classes {names}; fix the labels"
        )
    return names, {i: i for i in ids}


def _str_index(labels: list[str], where: str, names: list[str] | None) -> tuple[list[str], dict[Any, int]]:
    """Class names (given, else sorted) and label -> id for string labels."""
    names = names or sorted(set(labels))
    index = {v: i for i, v in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise PrunebertError(f"labels {unknown[:5]} in {where} are not in {names}; fix the label values")
    return names, index
