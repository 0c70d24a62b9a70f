"""Sentence-pair examples for masked-LM + next-sentence-prediction pre-training, as original BERT made them.

Devlin et al. 2019 (Sec. 3.1, and `create_pretraining_data.py` of google-research/bert): sentences of a
document are gathered until a pair is ``block_size - 3`` tokens long; a random number of them is segment
A; with probability 1/2 segment B is the actual continuation (label 0, "is next"), otherwise B is taken
from a random point of another document (label 1) and the unused sentences are put back for the next
pair. A pair too long is cut from the front or back of its longer segment at random. Each example is
``[CLS] A [SEP] B [SEP]`` with token types 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``. Unlike BERT
there is no 10% of shorter sequences and no duplication with other masks (masking is dynamic here).
Sentences are split at ``.``, ``!`` or ``?`` followed by white space, and at line breaks.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

import datasets
import torch

from prunebert.data.splits import carve, subsample
from prunebert.data.text import mask_tokens
from prunebert.errors import PrunebertError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["build_nsp_datasets", "nsp_pairs", "split_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
IS_NEXT, RANDOM_NEXT = 0, 1  # BertForPreTraining's next_sentence_label


def split_sentences(document: str) -> list[str]:
    """Sentences of a document (split after . ! ? and at line breaks), stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(document) if s.strip()]


def _truncate(a: list[int], b: list[int], limit: int, rng: random.Random) -> None:
    """Cut the longer segment, from its front or back at random, until both fit in `limit` tokens."""
    while len(a) + len(b) > limit:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def _random_segment(docs: list[list[list[int]]], avoid: int, length: int, rng: random.Random) -> list[int]:
    """About `length` tokens from a random point of a random document other than `avoid`."""
    other = rng.choice([i for i in range(len(docs)) if i != avoid])
    tokens: list[int] = []
    for sentence in docs[other][rng.randrange(len(docs[other])) :]:
        tokens += sentence
        if len(tokens) >= length:
            break
    return tokens


def _document_pairs(
    docs: list[list[list[int]]], d: int, limit: int, rng: random.Random
) -> list[tuple[list[int], list[int], int]]:
    """(A, B, label) pairs of document `d` (BERT's create_instances_from_document)."""
    doc, pairs = docs[d], []
    chunk: list[list[int]] = []
    i = 0
    while i < len(doc):
        chunk.append(doc[i])
        if i == len(doc) - 1 or sum(map(len, chunk)) >= limit:
            cut = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:cut] for t in s]
            if len(chunk) == 1 or rng.random() < 0.5:
                b, label = _random_segment(docs, d, limit - len(a), rng), RANDOM_NEXT
                i -= len(chunk) - cut  # the sentences not used go into the next pair
            else:
                b, label = [t for s in chunk[cut:] for t in s], IS_NEXT
            _truncate(a, b, limit, rng)
            if a and b:
                pairs.append((a, b, label))
            chunk = []
        i += 1
    return pairs


def nsp_pairs(
    documents: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int, seed: int
) -> list[tuple[list[int], list[int], int]]:
    """(A ids, B ids, label) pairs of every document, without special tokens; seeded."""
    sentences = [split_sentences(d) for d in documents]
    flat = [s for doc in sentences for s in doc]
    encoded = tokenizer(flat, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]
    docs, k = [], 0
    for doc in sentences:
        docs.append([ids for ids in encoded[k : k + len(doc)] if ids])
        k += len(doc)
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise PrunebertError(
            "next-sentence prediction needs at least 2 documents (random second segments come from another "
            "document); pass text with blank lines between documents, or --nsp off"
        )
    rng = random.Random(seed)
    limit = block_size - 3  # [CLS] A [SEP] B [SEP]
    return [pair for d in range(len(docs)) for pair in _document_pairs(docs, d, limit, rng)]


def _example(tokenizer: PreTrainedTokenizerBase, a: list[int], b: list[int], label: int) -> dict[str, Any]:
    """``[CLS] A [SEP] B [SEP]``, token types 0 up to the first ``[SEP]`` and 1 after (BERT's pair format)."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids = [cls, *a, sep, *b, sep]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": [1] * len(ids),
        "next_sentence_label": label,
    }


def _padded_masked(
    rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, block_size: int, seed: int
) -> datasets.Dataset:
    """Eval pairs padded to `block_size` and masked once with a `seed`-ed generator (fixed between runs)."""
    gen = torch.Generator().manual_seed(seed)
    cols: dict[str, list[Any]] = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask", "labels")}
    cols["next_sentence_label"] = [r["next_sentence_label"] for r in rows]
    for row in rows:
        masked, labels = mask_tokens(torch.tensor([row["input_ids"]]), tokenizer, 0.15, gen)
        pad = block_size - len(row["input_ids"])
        cols["input_ids"].append(masked[0].tolist() + [tokenizer.pad_token_id] * pad)
        cols["labels"].append(labels[0].tolist() + [-100] * pad)
        cols["token_type_ids"].append(row["token_type_ids"] + [0] * pad)
        cols["attention_mask"].append(row["attention_mask"] + [0] * pad)
    return datasets.Dataset.from_dict(cols)


def build_nsp_datasets(
    documents: list[str],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    eval_fraction: float = 0.05,
    seed: int = 0,
    max_train_blocks: int | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) sentence-pair datasets; train is unmasked and unpadded, eval padded and pre-masked."""
    pairs = nsp_pairs(documents, tokenizer, block_size, seed)
    if len(pairs) < 2:
        raise PrunebertError(
            f"the text gives {len(pairs)} sentence pairs, too few to train and evaluate; "
            "pass more text or --nsp off"
        )
    rows = [_example(tokenizer, a, b, label) for a, b, label in pairs]
    train_idx, eval_idx = carve(len(rows), eval_fraction, seed)
    train_idx = [train_idx[i] for i in subsample(len(train_idx), max_train_blocks, seed)]
    train = datasets.Dataset.from_list([rows[i] for i in train_idx])
    return train, _padded_masked([rows[i] for i in eval_idx], tokenizer, block_size, seed)
