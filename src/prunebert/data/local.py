"""Local task data: one csv/tsv/jsonl/json file (split 80/10/10) or a directory of train/dev/test files."""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunebert.data.schema import (
    Columns,
    RawSplit,
    RawTask,
    check_labels_present,
    clean_labels,
    pick_columns,
)
from prunebert.data.splits import carve, group_split, split_three
from prunebert.errors import PrunebertError

__all__ = ["SUFFIXES", "SplitReader", "find_split_file", "load_local", "read_columns", "read_table"]

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
_INT = re.compile(r"[+-]?\d+")

SplitReader = Callable[[Path], RawSplit]
"""Reads one data file into a canonical split (the text/label columns, or a QA task's)."""


def read_columns(path: Path) -> dict[str, list[Any]]:
    """Read a csv/tsv/jsonl/json file into column lists (csv label-like numbers are parsed later)."""
    return read_table(path)[0]


def read_table(path: Path) -> tuple[dict[str, list[Any]], list[int]]:
    """`read_columns`, and the line of the file each row starts on (for errors that name it)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PrunebertError(f"unsupported data file {path} (use {', '.join(SUFFIXES)}); convert it first")
    try:
        rows = _read_delimited(path, suffix) if suffix in (".csv", ".tsv") else _read_json(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PrunebertError(f"cannot read {path} ({e}); pass a readable UTF-8 file") from e
    if not rows:
        raise PrunebertError(f"{path} has no rows; pass a file with data")
    names = list(dict.fromkeys(k for _, row in rows for k in row))
    return {name: [row.get(name) for _, row in rows] for name in names}, [line for line, _ in rows]


def _read_delimited(path: Path, suffix: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a csv or tsv file with a header line; a row with more fields than the header, or a
    header naming a column twice, is an error (its texts would land in the wrong columns)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents exceed the 128 KiB default
    sep = "\t" if suffix == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=sep)
        header = list(reader.fieldnames or [])
        twice = [name for name in dict.fromkeys(header) if header.count(name) > 1]
        if twice:
            raise PrunebertError(f"the header of {path} names the column {twice[0]!r} twice; rename one")
        rows, start = [], 2
        for row in reader:
            if None in row:
                fields = len(header) + len(row[None])
                raise PrunebertError(
                    f"line {start} of {path} has {fields} fields but the header has {len(header)}; quote a "
                    f'text that holds a {"tab" if sep == chr(9) else "comma"} ("a, b") or fix the line'
                )
            rows.append((start, row))
            start = reader.line_num + 1
        return rows


def _read_json(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of a JSON-lines file, or of a .json file holding a list of objects (or JSON lines)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines under a .json name
        if isinstance(data, list) and all(isinstance(r, dict) for r in data):
            return [(i + 1, row) for i, row in enumerate(data)]  # object i: no line of its own
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunebertError(f"line {n} of {path} is not valid JSON ({e.msg}); fix the file") from e
        if not isinstance(row, dict):
            raise PrunebertError(f"line {n} of {path} is not a JSON object; write one object per line")
        rows.append((n, row))
    return rows


def _parse_csv_labels(values: list[Any]) -> list[Any]:
    """Turn csv label strings into ints (all integers) or floats (all numbers); otherwise keep strings."""
    texts = clean_labels(values)
    if not all(isinstance(v, str) and v for v in texts):
        return texts  # empty labels are reported by the label check
    if all(_INT.fullmatch(v) for v in texts):
        return [int(v) for v in texts]
    try:
        return [float(v) for v in texts]
    except ValueError:
        return texts


def _read_split(path: Path, columns: Columns) -> RawSplit:
    """One file as a canonical split."""
    data, lines = read_table(path)
    split = pick_columns(data, columns, str(path), lines)
    check_labels_present(split["label"], str(path), lines)
    if path.suffix.lower() in (".csv", ".tsv"):
        split["label"] = _parse_csv_labels(split["label"])
        check_labels_present(split["label"], str(path), lines)  # "nan" parses to a non-finite number
    return split


def _take(split: RawSplit, idx: list[int]) -> RawSplit:
    """The rows ``idx`` of a split."""
    return {k: [v[i] for i in idx] for k, v in split.items()}


def _rows(split: RawSplit) -> int:
    return len(next(iter(split.values())))


def find_split_file(directory: Path, stem: str) -> Path | None:
    """The ``<stem>.{csv,tsv,jsonl,json}`` file of a data directory, if there is one."""
    return _find(directory, (stem,))


def _find(directory: Path, stems: tuple[str, ...]) -> Path | None:
    """The first ``<stem><suffix>`` file present in ``directory``."""
    for stem in stems:
        for suffix in SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


def _load_dir(directory: Path, read: SplitReader, seed: int, group: str | None) -> dict[str, RawSplit]:
    """train + optional dev|validation (else 10% carved from train) + required test files."""
    train_path, test_path = _find(directory, ("train",)), _find(directory, ("test",))
    kinds = "{" + ",".join(s[1:] for s in SUFFIXES) + "}"
    if train_path is None:
        raise PrunebertError(f"no train.{kinds} in {directory}; add one or pass a single data file")
    if test_path is None:
        raise PrunebertError(
            f"no test.{kinds} in {directory}; add a test file, or pass a single file to get an 80/10/10 split"
        )
    train = read(train_path)
    dev_path = _find(directory, ("dev", "validation"))
    if dev_path is None:
        if group is None:
            keep, dev_idx = carve(_rows(train), 0.1, seed)
        else:
            keep, dev_idx, _ = group_split(train[group], seed, dev=0.1, test=0.0)
        dev, train = _take(train, dev_idx), _take(train, keep)
    else:
        dev = read(dev_path)
    return {"train": train, "dev": dev, "test": read(test_path)}


def load_local(
    path: Path, columns: Columns, seed: int, reader: SplitReader | None = None, group: str | None = None
) -> RawTask:
    """A task from a local file (seeded 80/10/10 split) or a directory of split files.

    `reader` turns one file into a canonical split (default: the `columns` of a labelled task); rows
    sharing a value of the `group` column stay in one split (a QA context and all its questions).
    """
    read = reader or (lambda p: _read_split(p, columns))
    if path.is_dir():
        return RawTask(name=path.name, splits=_load_dir(path, read, seed, group))
    data = read(path)
    train, dev, test = group_split(data[group], seed) if group else split_three(_rows(data), seed)
    splits = {"train": _take(data, train), "dev": _take(data, dev), "test": _take(data, test)}
    return RawTask(name=path.stem, splits=splits)
