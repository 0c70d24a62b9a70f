"""Shared fixtures: a tiny offline WordPiece tokenizer (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast, PreTrainedTokenizerBase

TINY_WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "good",
    "bad",
    "great",
    "awful",
    "is",
    "was",
    "plot",
    "actor",
    "and",
    "cat",
    "sat",
    "on",
    "mat",
    "dog",
    "ran",
    "home",
    "it",
    "not",
    ".",
    ",",
]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    """A lower-casing BERT WordPiece tokenizer over the five specials plus ``TINY_WORDS``."""
    directory: Path = tmp_path_factory.mktemp("tiny_tokenizer")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained(dir) reads vocab.txt in transformers 4 and 5 alike (v5 ignores a `vocab_file=` kwarg)
    return BertTokenizerFast.from_pretrained(str(directory))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models run fastest, and with stable timings, on one thread (no OpenMP contention)."""
    torch.set_num_threads(1)
