"""Thresholds that carry over: for each model, the margin threshold that restores the baseline's recall.

Fitted the same way for every model, the baseline included: on the fitting rows, the highest threshold whose
recall reaches the baseline's recall at its operating threshold (curves.at_recall). On the compare rows each
model is then read at its threshold against the baseline at its own, so no model is credited for a threshold
the baseline was not given. Fitted and reported on the same rows, recall is restored by construction and
precision is optimistic; fitted on other rows (compare --fit-data), the figures are held out.
"""

from __future__ import annotations

from fraudq.errors import BadInput
from fraudq.report import curves, stats
from fraudq.report.metrics import confusion, rates


def _columns(predictions: list[dict]) -> tuple[list[bool], list[float]]:
    return [p["label"] for p in predictions], [p["score"] for p in predictions]


def fit_thresholds(fit, base_index: int) -> dict:
    """{name: the at_recall point on the fitting rows}, and the recall they aim at."""
    _, base_result, base_preds = fit[base_index]
    labels = [p["label"] for p in base_preds]
    if not any(labels):
        raise BadInput("the fitting rows hold no fraud row, so no threshold can restore a recall; pass other --fit-data")
    target = rates(confusion(labels, [p["prediction"] for p in base_preds]))["recall"]
    points = {}
    for name, _, preds in fit:
        fit_labels, scores = _columns(preds)
        points[name] = curves.at_recall(fit_labels, scores, target)
    return {"target_recall": target, "baseline_threshold": base_result.get("threshold"), "points": points}


def _read_at(labels, scores, threshold: float) -> tuple[dict, list[bool]]:
    point = curves.at_threshold(labels, scores, threshold)
    return point, point.pop("predictions")


def fitted_section(loaded, fit, base_index: int, seed: int, fit_data: str | None) -> dict:
    """Each model's fitted threshold, what it gives on the fitting rows and on the compare rows, and its flips and
    bootstrap differences there against the baseline at the baseline's fitted threshold."""
    fitted = fit_thresholds(fit, base_index)
    base_name, base_result, base_preds = loaded[base_index]
    labels, base_scores = _columns(base_preds)
    _, base_y = _read_at(labels, base_scores, fitted["points"][base_name]["threshold"])
    fit_result = fit[base_index][1]
    models = []
    for name, _, preds in loaded:
        on_fit = fitted["points"][name]
        on_rows, preds_y = _read_at(labels, _columns(preds)[1], on_fit["threshold"])
        entry = {"name": name, "threshold": on_fit["threshold"], "on_fit": on_fit, "on_rows": on_rows}
        if name != base_name:
            entry["flips"] = stats.flips(labels, base_y, preds_y)
            entry["bootstrap"] = stats.bootstrap_deltas(labels, base_y, preds_y, n_resamples=1000, seed=seed)
        models.append(entry)
    return {
        "same_rows": fit_result.get("data_sha256") == base_result.get("data_sha256"),
        "fit_data": fit_data or fit_result.get("data"), "fit_data_sha256": fit_result.get("data_sha256"),
        "fit_rows": len(fit[base_index][2]), "baseline": base_name,
        "target_recall": fitted["target_recall"], "baseline_threshold": fitted["baseline_threshold"],
        "models": models,
    }
