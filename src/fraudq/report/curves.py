"""Operating points read off each model's own precision-recall curve, the same way for every model.

The rule everywhere: a row is fraud when its margin is above the threshold T; a margin equal to T is not fraud.
Rows with equal margins (bf16 logits give many) are flagged or left together, so a curve has one point per
distinct margin, and a reported threshold lies halfway to the next lower margin: no fitting row sits on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fraudq.report.metrics import _arrays

# A target computed as a ratio elsewhere (tp / positives) must still select the point it came from.
TOLERANCE = 1e-9


@dataclass
class Curve:
    margins: np.ndarray  # distinct margins, descending; point k flags every row with margin >= margins[k]
    thresholds: np.ndarray  # the T of point k under the rule margin > T
    tp: np.ndarray
    flagged: np.ndarray
    tied: np.ndarray  # rows whose margin is margins[k]: they enter the flagged set together
    positives: int


def curve(labels: Sequence[bool], scores: Sequence[float]) -> Curve:
    y, s = _arrays(labels, scores)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    margins = s[last]
    below = np.r_[margins[1:], margins[-1] - 1.0]  # any value under the lowest margin flags every row
    middle = (margins + below) / 2
    # Adjacent floats can round the midpoint up onto the margin itself; the next margin down is then exact.
    thresholds = np.where(middle < margins, middle, below)
    return Curve(margins, thresholds, np.cumsum(y)[last], last + 1, np.diff(np.r_[-1, last]), int(y.sum()))


def _point(c: Curve, k: int) -> dict:
    tp, flagged = int(c.tp[k]), int(c.flagged[k])
    precision = tp / flagged
    recall = tp / c.positives if c.positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(c.thresholds[k]), "precision": precision, "recall": recall, "f1": f1,
            "flagged": flagged, "tied_at_cut": int(c.tied[k])}


def at_recall(labels: Sequence[bool], scores: Sequence[float], target: float) -> dict:
    """The highest-threshold point whose recall reaches `target`: the most precise way to keep that recall."""
    c = curve(labels, scores)
    if c.positives == 0:
        raise ValueError("precision at recall needs at least one positive label")
    need = math.ceil(target * c.positives - TOLERANCE)
    reached = np.flatnonzero(c.tp >= need)
    if reached.size == 0:
        raise ValueError(f"target recall {target} is above the maximum, 1.0")
    return _point(c, int(reached[0]))


def at_precision(labels: Sequence[bool], scores: Sequence[float], target: float) -> dict | None:
    """The point of highest recall whose precision is at least `target` (highest threshold among equals);
    None when no point is that precise."""
    c = curve(labels, scores)
    ok = np.flatnonzero(c.tp / c.flagged >= target - TOLERANCE)
    if ok.size == 0 or c.positives == 0:
        return None
    return _point(c, int(ok[np.argmax(c.tp[ok])]))


def at_threshold(labels: Sequence[bool], scores: Sequence[float], threshold: float) -> dict:
    """Predictions margin > threshold, and how many rows sit exactly on it (counted as not fraud)."""
    y, s = _arrays(labels, scores)
    preds = s > threshold
    tp, flagged, positives = int(np.sum(preds & y)), int(preds.sum()), int(y.sum())
    precision = tp / flagged if flagged else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1, "flagged": flagged,
            "at_threshold": int(np.sum(s == threshold)), "predictions": preds.tolist()}


def ties(scores: Sequence[float]) -> dict:
    """How many rows share their margin with another row, and how many distinct margins there are."""
    _, counts = np.unique(np.asarray(scores, dtype=float), return_counts=True)
    return {"distinct_margins": int(counts.size), "tied_rows": int(counts[counts > 1].sum())}


def _sorted(y: np.ndarray, s: np.ndarray):
    order = np.argsort(-s, axis=1, kind="stable")
    s, y = np.take_along_axis(s, order, 1), np.take_along_axis(y, order, 1)
    last = np.ones_like(y)
    last[:, :-1] = s[:, 1:] != s[:, :-1]
    return y, np.cumsum(y, axis=1), last


def _resample_curves(y: np.ndarray, s: np.ndarray, need_tp: np.ndarray, target_p: np.ndarray) -> dict:
    """P at recall, R at precision and AUC of every resample (rows of y, s) at once; NaN where undefined."""
    rows = np.arange(y.shape[0])
    y, tp, last = _sorted(y, s)
    flagged = np.arange(1, y.shape[1] + 1)
    positives = tp[:, -1]
    negatives = y.shape[1] - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        reach = last & (tp >= need_tp[:, None])
        first = reach.argmax(axis=1)
        p_at_r = np.where(reach.any(axis=1), tp[rows, first] / flagged[first], np.nan)
        precise = last & (tp / flagged >= target_p[:, None] - TOLERANCE)
        best = np.where(precise, tp, -1).max(axis=1)
        r_at_p = np.where(best >= 0, best / positives, np.nan)
        # Mann-Whitney with ties as half: each negative is outranked by the positives above its group and by half
        # of those tied with it.
        starts = np.ones_like(last)
        starts[:, 1:] = last[:, :-1]
        tp_above = np.maximum.accumulate(np.where(starts, tp - y, 0), axis=1)
        tp_group_end = np.minimum.accumulate(np.where(last, tp, tp.shape[1] + 1)[:, ::-1], axis=1)[:, ::-1]
        won = np.where(y, 0.0, (tp_above + tp_group_end) / 2).sum(axis=1)
        auc = np.where((positives > 0) & (negatives > 0), won / (positives * negatives), np.nan)
    return {"precision_at_recall": p_at_r, "recall_at_precision": r_at_p, "auc": auc}


def _brier_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from fraudq.report.metrics import fraud_probability

    return (fraud_probability(scores) - labels) ** 2


def bootstrap_curve_deltas(labels, base_preds, base_scores, other_scores, idx: np.ndarray,
                           level: float = 0.95) -> dict:
    """Paired bootstrap of (other - base) for P at the baseline's recall, R at its precision, AUC and Brier.

    Each resample recomputes the targets from the baseline's own operating predictions on that resample, so the
    interval carries the target's uncertainty too. Resamples where a value is undefined are left out.
    """
    y = np.asarray(labels, dtype=bool)
    bp = np.array([p is True for p in base_preds])
    bs, os_ = np.asarray(base_scores, float), np.asarray(other_scores, float)
    brier_diff = _brier_rows(y, os_) - _brier_rows(y, bs)
    samples = {k: [] for k in ("precision_at_recall", "recall_at_precision", "auc", "brier")}
    step = max(1, 2_000_000 // max(1, y.size))  # resamples per chunk: bounded memory on large test sets
    for start in range(0, idx.shape[0], step):
        chunk = idx[start:start + step]
        yy, hit = y[chunk], bp[chunk]
        need_tp = (yy & hit).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            target_p = need_tp / hit.sum(axis=1)
        target_p = np.where(np.isfinite(target_p), target_p, np.inf)  # nothing flagged: no precision to match
        base = _resample_curves(yy, bs[chunk], need_tp, target_p)
        other = _resample_curves(yy, os_[chunk], need_tp, target_p)
        for key in base:
            samples[key].append(other[key] - base[key])
        samples["brier"].append(brier_diff[chunk].mean(axis=1))
    alpha = (1 - level) / 2
    out = {}
    for key, parts in samples.items():
        values = np.concatenate(parts)
        values = values[np.isfinite(values)]
        lo, hi = np.quantile(values, [alpha, 1 - alpha]) if values.size else (np.nan, np.nan)
        out[key] = {"lo": float(lo), "hi": float(hi), "resamples": int(values.size)}
    return out
