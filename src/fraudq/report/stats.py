"""Paired comparisons of one model against a baseline scored on the same rows.

Pairing matters: both models see the same rows, so row-level difficulty cancels out and
the tests below are far more sensitive than comparing two independent CIs.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

METRICS = ("precision", "recall", "f1")


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar: under H0 each discordant pair is a fair coin flip."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    # Exact integers, then one correctly rounded division: no underflow for large n.
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _pred_codes(preds: Sequence[bool | None]) -> np.ndarray:
    # 1 = fraud, 0 = not fraud, -1 = invalid answer.
    return np.array([-1 if p is None else int(bool(p)) for p in preds], dtype=np.int8)


def _check_lengths(*seqs: Sequence) -> int:
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"paired inputs must have equal length, got {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("no rows")
    return n


def flips(labels: Sequence[bool], base_preds: Sequence[bool | None], other_preds: Sequence[bool | None]) -> dict:
    """Rows whose prediction changed, by direction, plus McNemar's discordant counts.

    total = every changed row; changes to or from an invalid answer are counted in
    `invalid_changes` rather than as fraud_to_ok / ok_to_fraud.
    b = baseline right & other wrong, c = baseline wrong & other right (invalid = wrong).
    """
    _check_lengths(labels, base_preds, other_preds)
    y = np.asarray(labels, dtype=bool).astype(np.int8)
    base, other = _pred_codes(base_preds), _pred_codes(other_preds)
    base_ok, other_ok = base == y, other == y
    b = int(np.sum(base_ok & ~other_ok))
    c = int(np.sum(~base_ok & other_ok))
    changed = base != other
    return {
        "total": int(changed.sum()),
        "fraud_to_ok": int(np.sum((base == 1) & (other == 0))),
        "ok_to_fraud": int(np.sum((base == 0) & (other == 1))),
        "invalid_changes": int(np.sum(changed & ((base == -1) | (other == -1)))),
        "b": b,
        "c": c,
        "mcnemar_p": mcnemar_exact(b, c),
    }


def _cells(labels: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-row confusion cell, 0 tp, 1 fp, 2 fn, 3 tn; an invalid answer is wrong, as in metrics.confusion."""
    right = codes == labels
    return np.where(labels, np.where(right, 0, 2), np.where(right, 3, 1)).astype(np.int64)


def _rates_vec(counts: np.ndarray) -> dict[str, np.ndarray]:
    """metrics.rates over (..., 4) arrays of tp, fp, fn, tn counts; 0.0 where undefined."""

    def ratio(num, den):
        num, den = np.asarray(num, float), np.asarray(den, float)
        return np.divide(num, den, out=np.zeros_like(num), where=den != 0)

    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {"precision": precision, "recall": recall, "f1": ratio(2 * precision * recall, precision + recall)}


def _resampled_counts(cells: np.ndarray, n_cells: int, idx: np.ndarray) -> np.ndarray:
    """(R, n_cells) count of each cell in each resample, by one gather and one bincount."""
    n_resamples = idx.shape[0]
    # Offsetting resample r's cells by r * n_cells lets a single flat bincount count all resamples at once.
    offset = cells[idx] + n_cells * np.arange(n_resamples)[:, None]
    return np.bincount(offset.ravel(), minlength=n_cells * n_resamples).reshape(n_resamples, n_cells)


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return float(lo), float(hi)


def _indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_deltas(
    labels: Sequence[bool],
    base_preds: Sequence[bool | None],
    other_preds: Sequence[bool | None],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Paired percentile bootstrap of (other - base) for precision, recall, f1.

    Returns {metric: {"delta", "lo", "hi"}}; delta is the full-data difference.
    """
    n = _check_lengths(labels, base_preds, other_preds)
    y = np.asarray(labels, dtype=bool).astype(np.int8)
    # One joint cell per row (base cell * 4 + other cell), resampled with one set of indices:
    # both models always see the same rows, which is what makes the bootstrap paired.
    joint = _cells(y, _pred_codes(base_preds)) * 4 + _cells(y, _pred_codes(other_preds))
    boot = _resampled_counts(joint, 16, _indices(n, n_resamples, seed)).reshape(-1, 4, 4)
    full = np.bincount(joint, minlength=16).reshape(4, 4)
    base_boot, other_boot = _rates_vec(boot.sum(axis=2)), _rates_vec(boot.sum(axis=1))
    base_full, other_full = _rates_vec(full.sum(axis=1)), _rates_vec(full.sum(axis=0))
    out = {}
    for m in METRICS:
        lo, hi = _bounds(other_boot[m] - base_boot[m], level)
        out[m] = {"delta": float(other_full[m] - base_full[m]), "lo": lo, "hi": hi}
    return out


def bootstrap_metric_ci(
    labels: Sequence[bool],
    preds: Sequence[bool | None],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap CI of each metric, shaped for plots: {metric: [lo, hi]}."""
    n = _check_lengths(labels, preds)
    cells = _cells(np.asarray(labels, dtype=bool).astype(np.int8), _pred_codes(preds))
    boot = _rates_vec(_resampled_counts(cells, 4, _indices(n, n_resamples, seed)))
    return {m: list(_bounds(boot[m], level)) for m in METRICS}


def margin_shift(base_scores: Sequence[float], other_scores: Sequence[float]) -> dict:
    """How far scores moved, row by row (other - base); positive = more fraud-leaning."""
    _check_lengths(base_scores, other_scores)
    diff = np.asarray(other_scores, dtype=float) - np.asarray(base_scores, dtype=float)
    return {"mean": float(diff.mean()), "median": float(np.median(diff))}
