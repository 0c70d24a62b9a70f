"""Extractive QA as token windows: training labels for each window, and predicted spans back to text.

A context longer than the model's input is cut into overlapping windows, each ``[CLS] question [SEP]
context piece [SEP]``, consecutive pieces sharing `stride` tokens (BERT's SQuAD recipe, Devlin et al.
2019, Sec. 4.2, as in Hugging Face's ``run_qa``). A window is labelled with the answer's first and last
token when it holds the whole answer, else with the ``[CLS]`` position. Every window keeps which example
it came from and, per token, the character span it covers in the context (-1 for question and special
tokens), so predictions map back to text: the best of the `n_best` start x `n_best` end positions of
every window of an example, scored ``start_logit + end_logit``, inside the context, end >= start and at
most `max_answer_length` tokens long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from prunebert.errors import PrunebertError

__all__ = ["best_answers", "check_window_room", "qa_features", "window_labels"]

NOT_CONTEXT = (-1, -1)


def check_window_room(questions: Sequence[str], tokenizer: Any, max_length: int, stride: int) -> None:
    """Every question must leave more than `stride` context tokens per window (else the tokenizer panics)."""
    lengths = [len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    longest = max(lengths, default=0)
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= stride:
        raise PrunebertError(
            f"a question of {longest} tokens leaves {room} context tokens per window of {max_length}, "
            f"not more than the stride of {stride}; raise --max_seq_length or lower --qa.doc_stride"
        )


def window_labels(
    offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None], span: tuple[int, int], cls: int
) -> tuple[int, int]:
    """(start, end) token of the character span [a, b) in one window; (cls, cls) if not all inside it."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    a, b = span
    if not context or offsets[context[0]][0] > a or offsets[context[-1]][1] < b:
        return cls, cls
    start = max(i for i in context if offsets[i][0] <= a)  # the token holding the first character
    end = min(i for i in context if offsets[i][1] >= b)  # the token holding the last character
    return start, end


def _encode(
    batch: dict[str, list[Any]], indices: list[int], tokenizer: Any, max_length: int, stride: int
) -> Any:
    """The windows of a batch of examples, labelled, with their example index and context offsets."""
    enc = tokenizer(
        batch["question"],
        batch["context"],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    origin = enc.pop("overflow_to_sample_mapping")
    enc["example_index"], enc["start_positions"], enc["end_positions"] = [], [], []
    for w, offsets in enumerate(enc["offset_mapping"]):
        row, ids = origin[w], enc.sequence_ids(w)
        start = batch["answer_start"][row][0]  # train on the first gold answer
        span = (start, start + len(batch["answer_text"][row][0]))
        cls = enc["input_ids"][w].index(tokenizer.cls_token_id)
        first, last = window_labels(offsets, ids, span, cls)
        enc["start_positions"].append(first)
        enc["end_positions"].append(last)
        enc["example_index"].append(indices[row])
        enc["offset_mapping"][w] = [
            list(o) if s == 1 else list(NOT_CONTEXT) for o, s in zip(offsets, ids, strict=True)
        ]
    return enc


def qa_features(split: datasets.Dataset, tokenizer: Any, max_length: int, stride: int) -> datasets.Dataset:
    """Windows of every example of a QA split: inputs, start/end labels, example_index, offset_mapping."""
    if not getattr(tokenizer, "is_fast", False):
        raise PrunebertError(
            "extractive QA needs a fast tokenizer (character offsets); use a model whose tokenizer.json loads"
        )
    check_window_room(split["question"], tokenizer, max_length, stride)
    return split.map(
        _encode,
        batched=True,
        with_indices=True,
        remove_columns=split.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "stride": stride},
        desc="QA windows",
    )


def best_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    features: datasets.Dataset,
    contexts: Sequence[str],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[str]:
    """The predicted answer text of every example from its windows' logits (N_windows, T), "" if none fits."""
    windows: dict[int, list[int]] = {}
    for w, example in enumerate(features["example_index"]):
        windows.setdefault(example, []).append(w)
    offsets = features["offset_mapping"]
    answers = []
    for example, context in enumerate(contexts):
        best, text = -np.inf, ""
        for w in windows.get(example, []):
            n = len(offsets[w])  # logits beyond a window's length are the Trainer's padding
            s_logits, e_logits = start_logits[w, :n], end_logits[w, :n]
            for s in np.argsort(s_logits)[::-1][:n_best]:
                for e in np.argsort(e_logits)[::-1][:n_best]:
                    if offsets[w][s][0] < 0 or offsets[w][e][0] < 0 or not 0 <= e - s < max_answer_length:
                        continue
                    score = float(s_logits[s] + e_logits[e])
                    if score > best:
                        best, text = score, context[offsets[w][s][0] : offsets[w][e][1]]
        answers.append(text)
    return answers
