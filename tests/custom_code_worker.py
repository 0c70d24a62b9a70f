"""Load saved models as a transformers / sentence-transformers user would, with prunebert not importable.

Run by tests/test_custom_code.py: `python custom_code_worker.py RESULTS SENTENCES_JSON PLAN_JSON`, the
plan mapping each model directory to the loaders to run on it. Each loader runs with and without
`trust_remote_code`: "auto" (AutoModelForSequenceClassification logits on the padded batch of the
sentences), "pipeline" (the text-classification pipeline's class probabilities), "sentence-transformers"
(SentenceTransformer embeddings); a loader that raises records its error (type and message) instead.
Everything goes to RESULTS with torch.save.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class NoPrunebert(importlib.abc.MetaPathFinder):
    """Makes `import prunebert` fail, as on a machine without it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "prunebert" or name.startswith("prunebert."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")


def _logits(path: str, sentences: list[str], trust: bool) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust).eval()
    batch = AutoTokenizer.from_pretrained(path)(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _pipeline(path: str, sentences: list[str], trust: bool) -> torch.Tensor:
    """(N, labels) probabilities, in label-id order."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=path, trust_remote_code=trust, top_k=None, device="cpu")
    label2id = classify.model.config.label2id
    rows = []
    for scores in classify(sentences):
        by_id = {label2id[s["label"]]: s["score"] for s in scores}
        rows.append([by_id[i] for i in range(len(by_id))])
    return torch.tensor(rows)


def _sentence_transformer(path: str, sentences: list[str], trust: bool) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, trust_remote_code=trust, device="cpu")
    return model.encode(sentences, convert_to_tensor=True, batch_size=len(sentences))


LOADERS: dict[str, Callable[[str, list[str], bool], torch.Tensor]] = {
    "auto": _logits,
    "pipeline": _pipeline,
    "sentence-transformers": _sentence_transformer,
}


def main() -> None:
    sys.meta_path.insert(0, NoPrunebert())
    results_path, sentences_path, plan_path = sys.argv[1:]
    sentences = json.loads(Path(sentences_path).read_text())
    plan: dict[str, list[str]] = json.loads(Path(plan_path).read_text())
    results: dict[str, Any] = {}
    for path, loaders in plan.items():
        for loader in loaders:
            for trust in (True, False):
                try:
                    results[f"{path}|{loader}|{trust}"] = LOADERS[loader](path, sentences, trust)
                except Exception as exc:  # the refusal is the result
                    results[f"{path}|{loader}|{trust}"] = f"{type(exc).__name__}: {exc}"
    torch.save(results, results_path)


if __name__ == "__main__":
    main()
