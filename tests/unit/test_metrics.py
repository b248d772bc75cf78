import math

import numpy as np
import pytest

from fraudq.report.metrics import average_precision, average_ranks, confusion, pr_curve, rates, roc_auc


def test_seed_rates_to_five_decimals():
    r = rates({"tn": 1136, "fp": 31, "fn": 162, "tp": 1020, "invalid": 0})
    assert round(r["precision"], 5) == 0.97050
    assert round(r["recall"], 5) == 0.86294
    assert r["accuracy"] == pytest.approx((1136 + 1020) / 2349)
    p, rc = 1020 / 1051, 1020 / 1182
    assert r["f1"] == pytest.approx(2 * p * rc / (p + rc))


def test_confusion_counts_invalid_as_wrong():
    labels = [True, True, False, False, True, False]
    preds = [True, None, False, None, False, True]
    assert confusion(labels, preds) == {"tn": 1, "fp": 2, "fn": 2, "tp": 1, "invalid": 2}


def test_confusion_length_mismatch():
    with pytest.raises(ValueError):
        confusion([True], [True, False])


def test_rates_never_divide_by_zero():
    r = rates({"tn": 0, "fp": 0, "fn": 0, "tp": 0, "invalid": 0})
    assert r == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
    r = rates({"tn": 5, "fp": 0, "fn": 3, "tp": 0, "invalid": 0})
    assert r["precision"] == 0.0 and r["f1"] == 0.0 and r["accuracy"] == 5 / 8


def test_average_ranks_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_roc_auc_sklearn_doc_example():
    assert roc_auc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_roc_auc_with_ties_by_hand():
    # Positives {0.9, 0.5, 0.5}, negatives {0.9, 0.1}; pairs won: 0.5 (tie) + 1 + 0 + 1 + 0 + 1 = 3.5 of 6.
    labels = [True, False, True, False, True]
    scores = [0.9, 0.9, 0.5, 0.1, 0.5]
    assert roc_auc(labels, scores) == pytest.approx(3.5 / 6)


def test_roc_auc_extremes_and_one_class():
    assert roc_auc([True, False], [1.0, 0.0]) == 1.0
    assert roc_auc([True, False], [0.0, 1.0]) == 0.0
    assert roc_auc([True, False], [0.3, 0.3]) == 0.5
    assert roc_auc([True, True], [0.1, 0.2]) is None
    assert roc_auc([False, False], [0.1, 0.2]) is None


def test_pr_curve_points_descending_thresholds():
    precision, recall, thresholds = pr_curve([False, False, True, True], [0.1, 0.4, 0.35, 0.8])
    assert thresholds.tolist() == [0.8, 0.4, 0.35, 0.1]
    assert precision == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall == pytest.approx([0.5, 0.5, 1.0, 1.0])


def test_pr_curve_collapses_ties():
    precision, recall, thresholds = pr_curve([True, False, True], [0.5, 0.5, 0.1])
    assert thresholds.tolist() == [0.5, 0.1]
    assert precision == pytest.approx([0.5, 2 / 3])
    assert recall == pytest.approx([0.5, 1.0])


def test_average_precision_by_hand():
    # sklearn doc example: 0.5 * 1 + 0 * 0.5 + 0.5 * 2/3 + 0 * 0.5.
    assert average_precision([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    # Tie at the top: the first reachable point is (R 0.5, P 0.5), then (R 1, P 2/3).
    assert average_precision([True, False, True], [0.5, 0.5, 0.1]) == pytest.approx(0.25 + 1 / 3)
    assert average_precision([True, True, False], [0.9, 0.8, 0.1]) == 1.0
    assert average_precision([False, False], [0.9, 0.8]) is None


def test_average_precision_random_matches_definition():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + y, 1)  # rounding forces many ties
    # AP as the mean, over positives, of precision at that positive's score threshold.
    expected = np.mean([np.mean(y[s >= t]) for t in s[y]])
    assert average_precision(y.tolist(), s.tolist()) == pytest.approx(expected)
    assert math.isclose(roc_auc(y, s), np.mean([(p > q) + 0.5 * (p == q) for p in s[y] for q in s[~y]]))


def test_rejects_nan_scores():
    with pytest.raises(ValueError):
        roc_auc([True, False], [float("nan"), 0.1])
