"""Evaluation metrics as pure numpy functions (no scipy/sklearn); degenerate inputs give 0.0, never NaN."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from prunebert.errors import PrunebertError

__all__ = [
    "METRICS",
    "PRIMARY_METRIC",
    "accuracy",
    "compute_metrics",
    "f1",
    "macro_f1",
    "matthews_corrcoef",
    "normalize_answer",
    "pearson",
    "spearman",
    "squad_exact_match",
    "squad_f1",
    "squad_scores",
]

METRICS = ("accuracy", "f1", "mcc", "pearson_spearman", "squad")
PRIMARY_METRIC = {
    "accuracy": "accuracy",
    "f1": "f1",
    "mcc": "mcc",
    "pearson_spearman": "combined",
    "squad": "f1",
}
"""Which key of ``compute_metrics``'s result to rank runs by, per task metric."""


def _pair(predictions: ArrayLike, labels: ArrayLike) -> tuple[NDArray, NDArray]:
    """Both inputs as flat arrays of the same, non-zero length."""
    p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equal, non-zero lengths; got {p.size} predictions and {y.size} labels")
    return p, y


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predicted class ids equal to the labels."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def _f1_of(p: NDArray, y: NDArray, positive: object) -> float:
    """F1 of class ``positive`` (0.0 when it is neither predicted nor present)."""
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def f1(predictions: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
    """Binary F1 score of class ``positive`` (default 1)."""
    p, y = _pair(predictions, labels)
    return _f1_of(p, y, positive)


def macro_f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Unweighted mean of per-class F1 over every class seen in labels or predictions (as sklearn)."""
    p, y = _pair(predictions, labels)
    classes = np.union1d(p, y)
    return float(np.mean([_f1_of(p, y, c) for c in classes]))


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation (multi-class R_K statistic, as sklearn); 0.0 when either side is constant."""
    p, y = _pair(predictions, labels)
    classes, idx = np.unique(np.concatenate([y, p]), return_inverse=True)
    yi, pi = idx[: y.size], idx[y.size :]
    conf = np.zeros((classes.size, classes.size), dtype=np.float64)  # (true, pred)
    np.add.at(conf, (yi, pi), 1.0)
    t, pk = conf.sum(axis=1), conf.sum(axis=0)  # per-class true / predicted counts
    c, s = np.trace(conf), conf.sum()
    cov_yp = c * s - t @ pk
    cov_pp, cov_yy = s * s - pk @ pk, s * s - t @ t
    if cov_pp * cov_yy == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_pp * cov_yy))


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation coefficient; 0.0 when either side is constant."""
    x, y = _pair(predictions, labels)
    xc, yc = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return float(np.clip((xc @ yc) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def _average_ranks(x: NDArray) -> NDArray:
    """1-based ranks of ``x``, ties sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    return (start + (counts + 1) / 2.0)[inverse.reshape(-1)]


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation: Pearson of average ranks (ties averaged)."""
    x, y = _pair(predictions, labels)
    return pearson(_average_ranks(x), _average_ranks(y))


def compute_metrics(task_metric: str, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Metrics for a task: logits (N, C) are arg-maxed; regression takes scores of shape (N,) or (N, 1)."""
    if task_metric == "squad":
        raise ValueError("extractive QA is scored on answer texts: use squad_scores, not compute_metrics")
    preds = np.asarray(predictions)
    if task_metric == "pearson_spearman":
        scores = preds.reshape(preds.shape[0], -1)
        if scores.shape[1] != 1:
            raise ValueError(f"regression needs predictions of shape (N,) or (N, 1), got {preds.shape}")
        r, rho = pearson(scores, labels), spearman(scores, labels)
        return {"pearson": r, "spearman": rho, "combined": (r + rho) / 2}
    ids = preds.argmax(axis=-1) if preds.ndim == 2 else preds
    if task_metric == "accuracy":
        return {"accuracy": accuracy(ids, labels), "macro_f1": macro_f1(ids, labels)}
    if task_metric == "f1":
        return {"f1": f1(ids, labels), "accuracy": accuracy(ids, labels)}
    if task_metric == "mcc":
        return {"mcc": matthews_corrcoef(ids, labels), "accuracy": accuracy(ids, labels)}
    raise PrunebertError(
        f"unknown task metric {task_metric!r} (known: {', '.join(METRICS)}); pass one of them"
    )


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles (a/an/the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, truth: str) -> float:
    """1.0 if the normalised texts are equal."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised texts (SQuAD v1.1: bag of whitespace tokens)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 (fractions in [0, 1]; SQuAD's script prints them x100), each the best over the
    gold answers of a question, averaged over questions."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equal, non-zero lengths; got {len(predictions)} and {len(references)}")
    em = [
        max(squad_exact_match(p, g) for g in golds) for p, golds in zip(predictions, references, strict=True)
    ]
    f1s = [max(squad_f1(p, g) for g in golds) for p, golds in zip(predictions, references, strict=True)]
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1s))}
