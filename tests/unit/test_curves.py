"""Operating points off each model's own PR curve, with ties, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fraudq.report import curves
from fraudq.report.metrics import brier, confusion, expected_calibration_error, rates, roc_auc
from helpers import BASE, LABELS, OTHER



def test_curve_points_and_thresholds_by_hand():
    c = curves.curve(LABELS, BASE)
    assert c.margins.tolist() == [3.0, 2.0, 1.0, 0.5, -1.0, -2.0]
    assert c.tp.tolist() == [1, 2, 3, 3, 4, 4] and c.flagged.tolist() == [1, 3, 5, 6, 7, 8]
    assert c.tied.tolist() == [1, 2, 2, 1, 1, 1]
    # Halfway to the next margin down; the lowest point's threshold sits below every row.
    assert c.thresholds.tolist() == [2.5, 1.5, 0.75, -0.25, -1.5, -2.5]


def test_precision_at_the_baseline_recall_reads_every_model_off_its_own_curve():
    op = rates(confusion(LABELS, [s > 0 for s in BASE]))
    assert (op["recall"], op["precision"]) == (0.75, 0.5)
    base = curves.at_recall(LABELS, BASE, op["recall"])
    # The baseline itself reaches recall 3/4 at >= 1, leaving the 0.5 negative out: precision 3/5, not 1/2.
    assert base == {"threshold": 0.75, "precision": 0.6, "recall": 0.75, "f1": pytest.approx(2 / 3), "flagged": 5,
                    "tied_at_cut": 2}
    other = curves.at_recall(LABELS, OTHER, op["recall"])
    # Recall jumps from 2/4 to 4/4 at the tied pair of 1s: that point is the first to reach 3/4.
    assert other == {"threshold": 0.5, "precision": 0.8, "recall": 1.0, "f1": pytest.approx(8 / 9), "flagged": 5,
                     "tied_at_cut": 2}
    assert curves.at_recall(LABELS, BASE, 1.0)["precision"] == pytest.approx(4 / 7)
    with pytest.raises(ValueError):
        curves.at_recall(LABELS, BASE, 1.01)
    with pytest.raises(ValueError):
        curves.at_recall([False, False], [0.1, 0.2], 0.5)


def test_recall_at_the_baseline_precision_by_hand():
    assert curves.at_precision(LABELS, BASE, 0.5) == {"threshold": -1.5, "precision": 4 / 7, "recall": 1.0,
                                                      "f1": pytest.approx(8 / 11), "flagged": 7, "tied_at_cut": 1}
    assert curves.at_precision(LABELS, OTHER, 0.5)["recall"] == 1.0
    assert curves.at_precision(LABELS, OTHER, 0.85)["recall"] == 0.25  # only the top row is that precise
    assert curves.at_precision(LABELS, [0.0] * 8, 0.9) is None  # one tied point at precision 1/2


def test_a_threshold_on_a_tied_margin_leaves_those_rows_out():
    point = curves.at_threshold([True, False, True], [0.0, 0.0, 1.0], 0.0)
    assert point["predictions"] == [False, False, True] and point["at_threshold"] == 2
    assert curves.ties([0.0, 0.0, 1.0, 2.0, 2.0, 2.0]) == {"distinct_margins": 3, "tied_rows": 5}


def test_every_threshold_flags_exactly_its_point_even_between_adjacent_floats():
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=400), 1)
    scores[:3] = [1.0, np.nextafter(1.0, 0.0), np.nextafter(np.nextafter(1.0, 0.0), 0.0)]
    labels = rng.random(400) < 0.4
    c = curves.curve(labels, scores)
    for k, threshold in enumerate(c.thresholds):
        flagged = scores > threshold
        assert flagged.sum() == c.flagged[k] and (flagged & labels).sum() == c.tp[k]


def _plain_precision_at_recall(labels, scores, target):
    """Brute force: every candidate rule score >= t, highest t first; the first whose recall reaches target."""
    labels = np.asarray(labels)
    for t in sorted(set(scores), reverse=True):
        flagged = np.asarray(scores) >= t
        if (flagged & labels).sum() >= math.ceil(target * labels.sum() - 1e-9):
            return (flagged & labels).sum() / flagged.sum()
    raise AssertionError


def test_bootstrap_resamples_match_plain_recomputation():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.random(n) < 0.5
    s = np.round(rng.normal(size=n) + 2 * y, 1)  # rounding: many ties, as bf16 margins give
    o = np.round(s + rng.normal(0, 0.3, n), 1)
    base_preds = s > 0
    idx = rng.integers(0, n, (20, n))
    for row in idx:
        yy, ss, oo, bp = y[row], s[row], o[row], base_preds[row]
        tp = int((yy & bp).sum())
        got = curves._resample_curves(np.stack([yy, yy]), np.stack([ss, oo]), np.array([tp, tp]),
                                      np.array([tp / bp.sum()] * 2))
        for k, scores in enumerate((ss, oo)):
            assert got["precision_at_recall"][k] == pytest.approx(_plain_precision_at_recall(yy, scores, tp / yy.sum()))
            assert got["recall_at_precision"][k] == pytest.approx(curves.at_precision(yy, scores, tp / bp.sum())["recall"])
            assert got["auc"][k] == pytest.approx(roc_auc(yy, scores))


def test_a_model_identical_to_the_baseline_shows_zero_difference():
    rng = np.random.default_rng(1)
    y = (rng.random(200) < 0.5).tolist()
    s = np.round(rng.normal(size=200), 1).tolist()
    idx = rng.integers(0, 200, (200, 200))
    out = curves.bootstrap_curve_deltas(y, [v > 0 for v in s], s, list(s), idx)
    assert all(v["lo"] == v["hi"] == 0.0 for v in out.values()), out


def test_brier_and_calibration_error_by_hand():
    assert brier([True, False], [0.0, 0.0]) == 0.25
    assert expected_calibration_error([True, False], [0.0, 0.0]) == 0.0
    assert brier([True], [math.log(3)]) == pytest.approx(0.0625)  # sigmoid(log 3) = 0.75
    assert expected_calibration_error([True], [math.log(3)]) == pytest.approx(0.25)
    # Two bins: 0.75 holding one fraud and one not (gap 0.25), 0.25 holding one not (gap 0.25).
    assert expected_calibration_error([True, False, False], [math.log(3)] * 2 + [-math.log(3)]) == pytest.approx(0.25)
    assert brier([True], [1000.0]) == 0.0 and brier([False], [-1000.0]) == 0.0  # no overflow
