"""Binary-classification metrics, numpy only.

Label True = fraud = the positive class. A prediction of None is an invalid answer
(the model said neither true nor false); it is always wrong, so it can never inflate a score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion(labels: Sequence[bool], preds: Sequence[bool | None]) -> dict:
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    counts = {"tn": 0, "fp": 0, "fn": 0, "tp": 0, "invalid": 0}
    for label, pred in zip(labels, preds):
        if pred is None:
            counts["invalid"] += 1
            # An invalid answer is wrong whatever the label: a missed fraud, or a false alarm.
            counts["fn" if label else "fp"] += 1
        elif label:
            counts["tp" if pred else "fn"] += 1
        else:
            counts["fp" if pred else "tn"] += 1
    return counts


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def rates(counts: dict) -> dict:
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def _arrays(labels: Sequence[bool], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal-length 1-d")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse]


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Mann-Whitney U / (n_pos * n_neg): a tied pos/neg pair counts as half right."""
    y, s = _arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    u = average_ranks(s)[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_curve(labels: Sequence[bool], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of the rule `score >= t` for each distinct score t, t descending.

    Unlike sklearn no (recall 0, precision 1) end point is appended: every point is a real threshold.
    With no positive labels recall is all 0.
    """
    y, s = _arrays(labels, scores)
    if y.size == 0:
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Only the last row of each run of tied scores is a reachable operating point.
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tps / predicted
    n_pos = tps[-1]
    recall = tps / n_pos if n_pos else np.zeros_like(precision)
    return precision, recall, s[last_of_tie]


def average_precision(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """sklearn's AP: sum over thresholds of (R_k - R_{k-1}) * P_k, no interpolation. None without positives."""
    y, _ = _arrays(labels, scores)
    if not y.any():
        return None
    precision, recall, _ = pr_curve(labels, scores)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def fraud_probability(scores) -> np.ndarray:
    """sigmoid(margin): P(true word) over P(true word) + P(false word), computed without overflow."""
    s = np.asarray(scores, dtype=float)
    return np.exp(-np.logaddexp(0.0, -s))


def brier(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Mean squared error of sigmoid(margin) as P(fraud): 0 is perfect, 0.25 is a constant 0.5."""
    y, s = _arrays(labels, scores)
    return float(np.mean((fraud_probability(s) - y) ** 2))


def expected_calibration_error(labels: Sequence[bool], scores: Sequence[float], bins: int = 10) -> float:
    """Row-weighted gap between mean P(fraud) and the fraud rate, over `bins` equal-width bins of P(fraud)."""
    y, s = _arrays(labels, scores)
    p = fraud_probability(s)
    which = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in np.unique(which):
        in_bin = which == b
        gap += in_bin.sum() * abs(p[in_bin].mean() - y[in_bin].mean())
    return float(gap / y.size)
