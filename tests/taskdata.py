"""Generated data for the QA and regression tests: templated contexts with known answer spans, and
sentence pairs whose similarity label is computable (no such data is offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from conftest import TINY_WORDS

#: facts a context is built from: (subject, rest); a question names the subject, the answer is the rest
FACTS = [
    ("the cat", "sat on the mat"),
    ("the dog", "ran home"),
    ("the actor", "was great"),
    ("the plot", "was awful"),
    ("the movie", "is good"),
    ("the film", "was not bad"),
]
FILLER = TINY_WORDS[:13]


def qa_rows(n: int, seed: int = 0, filler: int = 6) -> list[dict]:
    """`n` SQuAD-style rows: a context of shuffled facts and filler words; the question is a fact's
    subject and the gold answer (text + character offset) is the rest of that fact."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        facts = rng.sample(FACTS, 4)
        parts, spans = [], {}
        for subject, rest in facts:
            noise = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, filler)))
            prefix = " ".join(p for p in [*parts, noise, subject] if p) + " "
            spans[subject] = (len(prefix), rest)
            parts += [p for p in (noise, f"{subject} {rest} .") if p]
        context = " ".join(parts)
        subject, _ = rng.choice(facts)
        start, text = spans[subject]
        assert context[start : start + len(text)] == text
        rows.append(
            {
                "id": f"q{i}",
                "question": subject,
                "context": context,
                "answers": {"text": [text], "answer_start": [start]},
            }
        )
    return rows


def write_qa(path: Path, rows: list[dict]) -> Path:
    """`rows` as JSON lines (nested answers)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_qa_csv(path: Path, rows: list[dict]) -> Path:
    """`rows` as a csv with flat answer_text / answer_start columns."""
    lines = ["id,question,context,answer_text,answer_start"]
    for r in rows:
        a = r["answers"]
        lines.append(f"{r['id']},{r['question']},{r['context']},{a['text'][0]},{a['answer_start'][0]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def similarity_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` sentence pairs; the label is 5 x the Jaccard overlap of their word sets (STS-B's 0..5 scale)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.sample(FILLER, rng.randint(3, 7))
        b = [w if rng.random() < rng.random() else rng.choice(FILLER) for w in a]
        overlap = len(set(a) & set(b)) / len(set(a) | set(b))
        rows.append({"sentence1": " ".join(a), "sentence2": " ".join(b), "score": round(5 * overlap, 3)})
    return rows


def write_similarity(path: Path, rows: list[dict]) -> Path:
    """`rows` as a csv with sentence1, sentence2 and a float score."""
    lines = ["sentence1,sentence2,score", *(f"{r['sentence1']},{r['sentence2']},{r['score']}" for r in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path
