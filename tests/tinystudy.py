"""The tiny study shared by test_study and test_report: a workspace of local files and its run.

The study runs once per test session (in the session's base temp dir); a later caller finds it finished
and, the study being resumable, reuses every run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from conftest import TINY_WORDS
from prunebert.cli import main
from tiny import tiny_mlm

RECIPE = Path(__file__).parent / "study-tiny.yaml"


def sentences(rng: random.Random, n: int, cues: tuple[list[str], list[str]]) -> list[tuple[str, int]]:
    """`n` sentences of filler words with one cue word that gives the label."""
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(TINY_WORDS[:13]) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(cues[label]))
        rows.append((" ".join(words), label))
    return rows


def build_workspace(root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """tiny-mlm/, text.txt, task-a.csv (good/bad cues) and task-b.csv (cat/dog cues) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_mlm().save_pretrained(root / "tiny-mlm")
    tokenizer.save_pretrained(root / "tiny-mlm")
    rng = random.Random(0)
    sentiment = (["bad", "awful"], ["good", "great"])
    (root / "text.txt").write_text("\n\n".join(s for s, _ in sentences(rng, 300, sentiment)))
    for name, cues in (("task-a", sentiment), ("task-b", (["cat", "mat"], ["dog", "home"]))):
        rows = sentences(rng, 120, cues)
        (root / f"{name}.csv").write_text("text,label\n" + "".join(f"{s},{y}\n" for s, y in rows))
    shutil.copy(RECIPE, root / RECIPE.name)
    return root


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Run a block from `path` (the tiny recipe names its inputs relative to the working directory)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def tiny_study(base: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The workspace of the session's tiny study, its study (in `study/`) run or reused."""
    root = base / "tiny-study"
    if not (root / "tiny-mlm").is_dir():
        build_workspace(root, tokenizer)
    with chdir(root):
        assert main(["study", RECIPE.name]) == 0
    return root
