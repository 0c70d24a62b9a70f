"""Extractive question answering data (SQuAD v1.1 style): a question, a context, answer spans in it.

Every source ends in `qa_split`, whatever it is: a local csv/tsv/jsonl/json file or directory (read with
`prunebert.data.local`), or a hub dataset such as `squad` (its splits turned into plain column lists
first). A split has the columns ``id``, ``question``, ``context``, ``answer_text`` (list of gold answer
texts) and ``answer_start`` (their character offsets in the context). Answers come either as SQuAD's
``answers`` column, ``{"text": [...], "answer_start": [...]}`` per row (jsonl, hub), or as one answer
per row in the flat columns ``answer_text`` and ``answer_start`` (csv). Questions about one context stay
in one split: splits are grouped by context.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from prunebert.data.local import find_split_file, load_local, read_columns
from prunebert.data.schema import Columns, RawSplit, RawTask
from prunebert.data.splits import group_split
from prunebert.errors import PrunebertError

__all__ = [
    "QA_COLUMNS",
    "QA_METRIC",
    "QAColumns",
    "has_qa_columns",
    "load_hub_qa",
    "load_local_qa",
    "local_columns",
    "qa_split",
]

QA_METRIC = "squad"
#: canonical columns of a QA split
QA_COLUMNS = ("id", "question", "context", "answer_text", "answer_start")
_SEARCH = 50  # characters around a given answer_start in which a misplaced answer is looked for


@dataclass(frozen=True)
class QAColumns:
    """Source columns of a QA task: question, context, and the answers (nested, or flat per row)."""

    question: str = "question"
    context: str = "context"
    answers: str = "answers"
    answer_text: str = "answer_text"
    answer_start: str = "answer_start"


def has_qa_columns(names: Iterable[str], qa: QAColumns, label_column: str) -> bool:
    """Whether a source with these columns is a QA task (question, context, answers; no label)."""
    have = set(names)
    answers = qa.answers in have or {qa.answer_text, qa.answer_start} <= have
    return {qa.question, qa.context} <= have and answers and label_column not in have


def local_columns(path: Path) -> list[str]:
    """Column names of a local data file, or of a data directory's train file."""
    file = find_split_file(path, "train") if path.is_dir() else path
    return list(read_columns(file)) if file is not None else []


def _text(value: Any, column: str, row: int, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PrunebertError(f"row {row} of {where} has no {column!r}; fill it in or drop the row")
    return str(value)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _nested(value: Any, row: int, where: str) -> tuple[list[Any], list[Any]]:
    """(texts, starts) of SQuAD's `answers` object (a dict, or its JSON text in a csv cell)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise PrunebertError(
            f'row {row} of {where}: answers must be {{"text": [...], "answer_start": [...]}}; '
            "fix the row, or give one answer per row in answer_text/answer_start columns"
        )
    return _as_list(value["text"]), _as_list(value["answer_start"])


def _start(value: Any, row: int, where: str) -> int:
    try:
        start = int(str(value).strip())
    except ValueError:
        start = -1
    if start < 0:
        raise PrunebertError(
            f"row {row} of {where} has answer_start {value!r}; give the answer's character offset (>= 0)"
        )
    return start


def _align(context: str, text: str, start: int) -> int | None:
    """`start` if the answer is there, else its nearest occurrence within `_SEARCH` characters."""
    if context[start : start + len(text)] == text:
        return start
    found = [
        i
        for i in range(max(0, start - _SEARCH), min(len(context), start + _SEARCH) + 1)
        if context.startswith(text, i)
    ]
    return min(found, key=lambda i: abs(i - start)) if found else None


def _answers(data: dict[str, list[Any]], qa: QAColumns, where: str) -> list[tuple[list[Any], list[Any]]]:
    """(texts, starts) per row, from the nested `answers` column or the flat pair of columns."""
    if qa.answers in data:
        return [_nested(v, i + 1, where) for i, v in enumerate(data[qa.answers])]
    if qa.answer_text in data and qa.answer_start in data:
        return [([t], [s]) for t, s in zip(data[qa.answer_text], data[qa.answer_start], strict=True)]
    raise PrunebertError(
        f"no answers column {qa.answers!r} (nor {qa.answer_text!r} + {qa.answer_start!r}) in {where} "
        f"(columns: {', '.join(data) or 'none'}); pass --qa.answers_column NAME"
    )


def qa_split(data: dict[str, list[Any]], qa: QAColumns, where: str) -> RawSplit:
    """Source column lists -> a canonical QA split, every answer checked to be a span of its context."""
    for column, option in ((qa.question, "question_column"), (qa.context, "context_column")):
        if column not in data:
            raise PrunebertError(
                f"{option.split('_')[0]} column {column!r} not in {where} (columns: {', '.join(data)}); "
                f"pass --qa.{option} NAME"
            )
    out: RawSplit = {name: [] for name in QA_COLUMNS}
    ids = data.get("id") or [str(i) for i in range(len(data[qa.question]))]
    rows = zip(ids, data[qa.question], data[qa.context], _answers(data, qa, where), strict=True)
    for i, (ident, question, context, (texts, starts)) in enumerate(rows, 1):
        context = _text(context, qa.context, i, where)
        if not texts or len(texts) != len(starts):
            raise PrunebertError(
                f"row {i} of {where} has no answer (or texts and starts differ in number); unanswerable "
                "(SQuAD v2-style) questions are not supported: drop them"
            )
        pairs = zip(texts, starts, strict=True)
        spans = [(_text(t, "answer text", i, where), _start(s, i, where)) for t, s in pairs]
        aligned = [_align(context, t, s) for t, s in spans]
        if None in aligned:
            raise PrunebertError(
                f"row {i} of {where}: answer {spans[aligned.index(None)][0]!r} is not in its context at "
                "answer_start; fix answer_start (a character offset into the context)"
            )
        out["id"].append(str(ident))
        out["question"].append(_text(question, qa.question, i, where))
        out["context"].append(context)
        out["answer_text"].append([t for t, _ in spans])
        out["answer_start"].append([int(s) for s in aligned if s is not None])
    return out


def load_local_qa(path: Path, qa: QAColumns, seed: int) -> RawTask:
    """A QA task from a local file (80/10/10 split grouped by context) or a directory of split files."""

    def read(file: Path) -> RawSplit:
        return qa_split(read_columns(file), qa, str(file))

    raw = load_local(path, Columns(), seed, reader=read, group="context")
    raw.metric = QA_METRIC
    return raw


def _hub_columns(ds: datasets.Dataset, qa: QAColumns) -> dict[str, list[Any]]:
    wanted = {"id", qa.question, qa.context, qa.answers, qa.answer_text, qa.answer_start}
    return {c: list(ds[c]) for c in ds.column_names if c in wanted}


def _take(split: RawSplit, idx: list[int]) -> RawSplit:
    return {k: [v[i] for i in idx] for k, v in split.items()}


def load_hub_qa(dd: datasets.DatasetDict, spec: str, qa: QAColumns, seed: int) -> RawTask:
    """A QA task from a fetched hub dataset (`squad`): its validation split is test (SQuAD hides its test
    set), dev is a seeded 10% of train grouped by context."""
    if "train" not in dd:
        names = ", ".join(dd)
        raise PrunebertError(f"hub dataset has no train split (splits: {names}); pass a local dataset")
    train = qa_split(_hub_columns(dd["train"], qa), qa, f"{spec} (train)")
    held_out = next((s for s in ("validation", "test") if s in dd), None)
    splits: dict[str, RawSplit]
    if held_out is None:
        parts = group_split(train["context"], seed)
        splits = dict(zip(("train", "dev", "test"), (_take(train, p) for p in parts), strict=True))
    else:
        keep, dev, _ = group_split(train["context"], seed, dev=0.1, test=0.0)
        test = qa_split(_hub_columns(dd[held_out], qa), qa, f"{spec} ({held_out})")
        splits = {"train": _take(train, keep), "dev": _take(train, dev), "test": test}
    return RawTask(name=spec, splits=splits, metric=QA_METRIC)
