import time
from math import comb

import numpy as np
import pytest

from fraudq.report.metrics import confusion, rates
from fraudq.report.stats import (
    bootstrap_deltas,
    bootstrap_metric_ci,
    flips,
    margin_shift,
    mcnemar_exact,
)


def test_mcnemar_hand_values():
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)  # 2 * (1 + 7) / 128
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 / 32
    assert mcnemar_exact(10, 10) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 12) == pytest.approx(2 * (comb(15, 0) + comb(15, 1) + comb(15, 2) + comb(15, 3)) / 2**15)
    assert mcnemar_exact(3, 12) == pytest.approx(0.03515625)


def test_mcnemar_large_counts_do_not_underflow():
    p = mcnemar_exact(0, 2000)
    assert p == 2 * 0.5**2000 and 0.0 <= p < 1e-300
    assert 0.0 < mcnemar_exact(900, 1100) < 1e-5


def test_flips_directions_and_discordant_counts():
    labels = [True, True, False, False, True, False]
    base = [True, True, False, True, None, False]
    other = [False, True, True, False, True, None]
    f = flips(labels, base, other)
    assert f["total"] == 5
    assert f["fraud_to_ok"] == 2  # rows 0 and 3
    assert f["ok_to_fraud"] == 1  # row 2
    assert f["invalid_changes"] == 2  # rows 4 and 5
    # b: base right, other wrong = rows 0, 2, 5; c: base wrong, other right = rows 3, 4.
    assert (f["b"], f["c"]) == (3, 2)
    assert f["mcnemar_p"] == mcnemar_exact(3, 2)


def _synthetic(n=2349, seed=3):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    base = np.where(rng.random(n) < 0.9, labels, ~labels)
    other = np.where(rng.random(n) < 0.05, ~base, base)
    return labels.tolist(), base.tolist(), other.tolist()


def test_bootstrap_deterministic_under_seed_and_fast():
    labels, base, other = _synthetic()
    start = time.perf_counter()
    a = bootstrap_deltas(labels, base, other, n_resamples=1000, seed=7)
    assert time.perf_counter() - start < 1.0
    assert a == bootstrap_deltas(labels, base, other, n_resamples=1000, seed=7)
    assert a != bootstrap_deltas(labels, base, other, n_resamples=1000, seed=8)


def test_bootstrap_delta_is_full_data_difference_inside_ci():
    labels, base, other = _synthetic()
    out = bootstrap_deltas(labels, base, other, n_resamples=500, seed=0)
    rb, ro = rates(confusion(labels, base)), rates(confusion(labels, other))
    for m in ("precision", "recall", "f1"):
        d = out[m]
        assert d["delta"] == pytest.approx(ro[m] - rb[m])
        assert d["lo"] <= d["delta"] <= d["hi"]
        assert d["lo"] < d["hi"]


def test_bootstrap_equal_predictions_give_exact_zero():
    labels, base, _ = _synthetic(n=200)
    out = bootstrap_deltas(labels, base, list(base), n_resamples=200, seed=0)
    assert out == {m: {"delta": 0.0, "lo": 0.0, "hi": 0.0} for m in ("precision", "recall", "f1")}


def test_bootstrap_handles_invalid_predictions():
    labels = [True, False] * 50
    base = [True, False] * 50
    other = [None, False] * 50  # every fraud row answered invalidly: recall falls to 0
    out = bootstrap_deltas(labels, base, other, n_resamples=100)
    assert out["recall"] == {"delta": -1.0, "lo": -1.0, "hi": -1.0}


def test_metric_ci_contains_point_and_is_deterministic():
    labels, base, _ = _synthetic()
    ci = bootstrap_metric_ci(labels, base, seed=1)
    assert ci == bootstrap_metric_ci(labels, base, seed=1)
    point = rates(confusion(labels, base))
    for m in ("precision", "recall", "f1"):
        lo, hi = ci[m]
        assert lo <= point[m] <= hi
        assert hi - lo < 0.05  # ~2,349 rows at ~0.9: a CI a few points wide


def test_bootstrap_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        bootstrap_deltas([True, False], [True], [True, False])


def test_margin_shift():
    assert margin_shift([1.0, 2.0, 3.0], [1.5, 1.0, 4.0]) == {"mean": pytest.approx((0.5 - 1.0 + 1.0) / 3), "median": 0.5}


def test_bootstrap_matches_a_plain_loop_over_the_same_resamples():
    """The vectorised bootstrap against the definition: recompute each metric row by row per resample."""
    rng = np.random.default_rng(3)
    n, resamples, seed = 60, 200, 11
    labels = list(rng.random(n) < 0.5)
    base = [bool(x) if rng.random() > 0.1 else not x for x in labels]
    other = [bool(x) if rng.random() > 0.2 else not x for x in labels]
    other[5] = None  # an invalid answer counts as wrong
    indices = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    deltas = {m: [] for m in ("precision", "recall", "f1")}
    for row in indices:
        pick = lambda xs: [xs[i] for i in row]  # noqa: E731
        before = rates(confusion(pick(labels), pick(base)))
        after = rates(confusion(pick(labels), pick(other)))
        for m in deltas:
            deltas[m].append(after[m] - before[m])
    got = bootstrap_deltas(labels, base, other, n_resamples=resamples, seed=seed)
    for m, values in deltas.items():
        lo, hi = np.quantile(values, [0.025, 0.975])
        assert got[m]["lo"] == pytest.approx(lo, abs=1e-12) and got[m]["hi"] == pytest.approx(hi, abs=1e-12)
        full = rates(confusion(labels, other))[m] - rates(confusion(labels, base))[m]
        assert got[m]["delta"] == pytest.approx(full, abs=1e-12)
