"""Metrics against hand-computed values, including ties and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunebert.errors import PrunebertError
from prunebert.metrics import (
    _average_ranks,
    accuracy,
    compute_metrics,
    f1,
    macro_f1,
    matthews_corrcoef,
    pearson,
    spearman,
)

# binary: tp = 2 (rows 0, 4), fp = 1 (row 1), tn = 1 (row 2), fn = 1 (row 3)
PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 1, 1]


def test_accuracy() -> None:
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert accuracy(PRED, GOLD) == 0.6


def test_binary_f1_is_two_tp_over_two_tp_fp_fn() -> None:
    assert f1(PRED, GOLD) == pytest.approx(4 / 6)
    assert f1(PRED, GOLD, positive=0) == pytest.approx(2 / 4)  # tp 1, fp 1, fn 1


def test_macro_f1_three_classes() -> None:
    # class 0: tp1 fp1 fn1 -> 1/2; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    pred, gold = [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]
    assert macro_f1(pred, gold) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_mcc_binary_from_confusion_matrix() -> None:
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3 * 3 * 2 * 2)
    assert matthews_corrcoef(PRED, GOLD) == pytest.approx(1 / 6)
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_mcc_multiclass() -> None:
    # C = [[1,1,0],[0,2,0],[1,0,1]]: c=4, s=6, t=[2,2,2], p=[2,3,1]
    # (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (24 - 12) / sqrt((36 - 14) * (36 - 12)) = 12 / sqrt(528)
    pred, gold = [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]
    assert matthews_corrcoef(pred, gold) == pytest.approx(12 / math.sqrt(528))


@pytest.mark.parametrize("fn", [matthews_corrcoef, pearson, spearman])
def test_constant_predictions_give_zero_not_nan(fn) -> None:
    assert fn([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert fn([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0


def test_f1_without_positives_is_zero() -> None:
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0


def test_pearson_hand_computed() -> None:
    # centred x = [-1.5, -.5, .5, 1.5], y = [-1.5, .5, -.5, 1.5]: cov 4, var 5 and 5
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_average_ranks_share_ties() -> None:
    np.testing.assert_allclose(_average_ranks(np.array([10, 20, 20, 5])), [2, 3.5, 3.5, 1])
    np.testing.assert_allclose(_average_ranks(np.array([3.0, 3.0, 3.0])), [2, 2, 2])


def test_spearman_with_ties_and_monotone() -> None:
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]: cov 4.5, var 4.5 and 5
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 10, 100, 1000], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)


def test_compute_metrics_keys_and_argmax() -> None:
    logits = np.array([[2.0, 1.0], [0.1, 0.9], [3.0, -1.0], [0.0, 1.0]])  # argmax 0, 1, 0, 1
    gold = np.array([0, 1, 1, 1])
    assert compute_metrics("accuracy", logits, gold) == pytest.approx(
        {"accuracy": 0.75, "macro_f1": (2 / 3 + 0.8) / 2}
    )
    assert compute_metrics("f1", logits, gold) == pytest.approx({"f1": 0.8, "accuracy": 0.75})
    assert set(compute_metrics("mcc", logits, gold)) == {"mcc", "accuracy"}


def test_compute_metrics_regression_shapes() -> None:
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    out = compute_metrics("pearson_spearman", np.array([[1.0], [3.0], [2.0], [4.0]]), gold)
    assert out == pytest.approx({"pearson": 0.8, "spearman": 0.8, "combined": 0.8})
    assert compute_metrics("pearson_spearman", gold, gold)["combined"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in out.values())
    with pytest.raises(ValueError, match="shape"):
        compute_metrics("pearson_spearman", np.zeros((4, 2)), gold)


def test_bad_inputs() -> None:
    with pytest.raises(PrunebertError, match="unknown task metric 'bleu'"):
        compute_metrics("bleu", [0], [0])
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        accuracy([], [])
