import numpy as np
import pytest

from fraudq.report.metrics import confusion, rates
from fraudq.report.plots import write_plots
from fraudq.report.stats import bootstrap_metric_ci

NAMES = ["bf16", "int8", "int4"]
SIZES = [16.1e9, 8.9e9, 5.2e9]


def synthetic_models(n=2349, seed=0, noise=(0.0, 0.3, 0.8)):
    """Three models of one labelled set: the baseline and two noisier copies of its scores."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    base = np.where(labels, 3.0, -3.0) + rng.normal(0, 2.0, n)
    models = []
    for name, size, sd in zip(NAMES, SIZES, noise):
        scores = base + rng.normal(0.1 * sd, sd, n)
        preds = (scores > 0).tolist()
        r = rates(confusion(labels.tolist(), preds))
        models.append({
            "name": name,
            "labels": labels.tolist(),
            "scores": scores.tolist(),
            "preds": preds,
            "precision": r["precision"],
            "recall": r["recall"],
            "f1": r["f1"],
            "size_bytes": size,
            "ci": bootstrap_metric_ci(labels.tolist(), preds, n_resamples=200),
        })
    return models


def test_writes_four_nonempty_pngs(tmp_path):
    paths = write_plots(synthetic_models(), "bf16", tmp_path / "plots")
    assert [p.name for p in paths] == ["metrics.png", "pr_curves.png", "size_vs_f1.png", "margins.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 10_000


def test_generate_mode_model_is_left_out_of_curves(tmp_path):
    models = synthetic_models(n=300)
    models[2]["scores"] = None
    del models[1]["ci"]
    paths = write_plots(models, "bf16", tmp_path)
    assert [p.name for p in paths] == ["metrics.png", "pr_curves.png", "size_vs_f1.png", "margins.png"]


def test_no_scores_at_all_skips_curve_plots(tmp_path):
    models = synthetic_models(n=300)
    for m in models:
        m["scores"] = None
    assert [p.name for p in write_plots(models, "bf16", tmp_path)] == ["metrics.png", "size_vs_f1.png"]


def test_unknown_baseline(tmp_path):
    with pytest.raises(ValueError):
        write_plots(synthetic_models(n=50), "fp32", tmp_path)
