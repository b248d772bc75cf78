"""Several models' results side by side against a baseline, with paired statistics; never evaluates.

Input is what eval wrote: (name, results, predictions) per model, as eval.results.read_results reads them.
Curve figures (precision at the baseline's recall, recall at its precision) are read off each model's own PR
curve, the baseline's included, so no model is read at a fixed threshold while another is read off its curve.
"""

from __future__ import annotations

from pathlib import Path

from fraudq.errors import BadInput
from fraudq.report import curves, fitting, stats
from fraudq.report.metrics import average_precision, brier, confusion, expected_calibration_error, rates

METRICS = ("precision", "recall", "f1", "accuracy", "auc")
CURVE_METRICS = ("precision_at_recall", "recall_at_precision", "pr_auc", "brier", "ece")
RESAMPLES = 1000
Loaded = tuple[str, dict, list[dict]]  # model name, its results, its predictions
SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def check_comparable(loaded) -> None:
    """Results on other data or another prompt are not comparable: refuse rather than mislead."""
    first_name, first, first_preds = loaded[0]
    for name, result, preds in loaded[1:]:
        if result.get("data_sha256") != first.get("data_sha256"):
            raise BadInput(f"{name} was evaluated on other data than {first_name}; rerun eval on one file")
        if result.get("eval_config") != first.get("eval_config"):
            raise BadInput(f"{name} was evaluated with another eval config than {first_name}; rerun eval")
        if [p["id"] for p in preds] != [p["id"] for p in first_preds]:
            raise BadInput(f"{name} and {first_name} cover different rows; rerun eval with the same --limit")


def pick_baseline(loaded) -> int:
    for index, (_, result, _) in enumerate(loaded):
        if result.get("quantization") is None:
            return index
    return 0


def label(name: str, result: dict, baseline: bool) -> str:
    """The name the user typed, with the dtype the model computed in: the baseline called fp16 may have run in fp32."""
    dtype = SHORT_DTYPES.get(result.get("dtype"), result.get("dtype"))
    inside = ", ".join(part for part in (dtype, "baseline" if baseline else None) if part)
    return f"{name} ({inside})" if inside else name


def targets(base_result: dict, base_preds: list[dict]) -> dict:
    """The baseline's operating point: the recall and precision every model is then read at."""
    labels = [p["label"] for p in base_preds]
    point = rates(confusion(labels, [p["prediction"] for p in base_preds]))
    return {"recall": point["recall"], "precision": point["precision"], "threshold": base_result.get("threshold")}


def _scores(predictions: list[dict]) -> list[float] | None:
    scores = [p["score"] for p in predictions]
    return None if None in scores else scores


def model_row(name: str, result: dict, predictions: list[dict], target: dict, is_base: bool) -> dict:
    labels = [p["label"] for p in predictions]
    scores = _scores(predictions)
    memory = result.get("memory") or {}
    row = {
        "name": name,
        "label": label(name, result, is_base),
        "model": result["model"],
        "bits": (result.get("quantization") or {}).get("bits"),
        "dtype": result.get("dtype"),
        "threshold": result.get("threshold"),
        **{k: result.get(k) for k in METRICS},
        "confusion": result["confusion"],
        "size_bytes": result.get("size_bytes"),
        "samples_per_s": result.get("samples_per_s"),
        "peak_memory_gb": memory.get("peak_gpu_gb", memory.get("peak_rss_gb")),
        "kernel": result.get("kernel"),
        **dict.fromkeys(CURVE_METRICS),
    }
    if scores is not None and any(labels):
        at_r = curves.at_recall(labels, scores, target["recall"])
        at_p = curves.at_precision(labels, scores, target["precision"])
        row.update({
            "pr_auc": average_precision(labels, scores),
            "precision_at_recall": at_r["precision"], "recall_at_precision": at_p["recall"] if at_p else None,
            "points": {"at_recall": at_r, "at_precision": at_p},
            "brier": brier(labels, scores), "ece": expected_calibration_error(labels, scores),
            "ties": {**curves.ties(scores),
                     "at_threshold": sum(s == result.get("threshold") for s in scores)},
        })
    return row


def paired_row(base_preds: list[dict], other_preds: list[dict], base: dict, row: dict, seed: int) -> dict:
    labels = [p["label"] for p in base_preds]
    base_y = [p["prediction"] for p in base_preds]
    other_y = [p["prediction"] for p in other_preds]
    paired = {
        "delta": {k: _diff(row[k], base[k]) for k in METRICS + CURVE_METRICS},
        "flips": stats.flips(labels, base_y, other_y),
        "bootstrap": stats.bootstrap_deltas(labels, base_y, other_y, n_resamples=RESAMPLES, seed=seed),
    }
    base_scores, other_scores = _scores(base_preds), _scores(other_preds)
    if base_scores is not None and other_scores is not None and any(labels):
        paired["margin_shift"] = stats.margin_shift(base_scores, other_scores)
        idx = stats._indices(len(labels), RESAMPLES, seed)  # the resamples bootstrap_deltas draws: one pairing
        intervals = curves.bootstrap_curve_deltas(labels, base_y, base_scores, other_scores, idx)
        for key, interval in intervals.items():
            paired["bootstrap"][key] = {"delta": paired["delta"][key], **interval}
    return paired


def _diff(value, base):
    return None if value is None or base is None else value - base


def build_table(loaded: list[Loaded], seed: int, fit: list[Loaded] | None = None, fit_data: str | None = None) -> dict:
    """The comparison of loaded results: one row per model, paired statistics against the baseline, and the
    thresholds that restore the baseline's recall, fitted on `fit` (the same models on other rows) or, without
    it, on these rows."""
    check_comparable(loaded)
    base_index = pick_baseline(loaded)
    base_name, base_result, base_preds = loaded[base_index]
    target = targets(base_result, base_preds)
    rows = [model_row(*item, target, index == base_index) for index, item in enumerate(loaded)]
    for row, (name, _, preds) in zip(rows, loaded):
        if name != base_name:
            row["vs_baseline"] = paired_row(base_preds, preds, rows[base_index], row, seed)
    table = {"baseline": base_name, "data": base_result.get("data"), "data_sha256": base_result.get("data_sha256"),
             "eval_config": base_result.get("eval_config"), "rows": len(base_preds), "targets": target,
             "models": rows, "notes": notes(rows, base_index)}
    if all(_scores(preds) is not None for _, _, preds in loaded) and any(p["label"] for p in base_preds):
        table["fitted"] = fitting.fitted_section(loaded, fit or loaded, base_index, seed, fit_data)
    return table


def notes(rows: list[dict], base_index: int) -> list[str]:
    """What a reader must know to read the numbers: dtype mismatches, and how tied margins are handled."""
    base = rows[base_index]
    out = []
    for row in rows:
        if row is not base and row["dtype"] and base["dtype"] and row["dtype"] != base["dtype"]:
            out.append(f"{base['name']} ran in {base['dtype']} and {row['name']} in {row['dtype']}: their "
                       "differences include that rounding (eval --dtype auto matches the quantized kernels)")
    tied = [f"{row['name']} {row['ties']['tied_rows']:,}" for row in rows if row.get("ties")]
    if tied:
        c = base["confusion"]
        out.append(f"rows that share their margin with another row (of {c['tn'] + c['fp'] + c['fn'] + c['tp']:,}): "
                   f"{', '.join(tied)}; tied rows are flagged together (no curve point splits them), and a margin "
                   "equal to the threshold is not fraud")
    return out


def write_compare_plots(loaded, rows, baseline: str, plot_dir: Path) -> list[Path]:
    from fraudq.report.plots import write_plots

    models = []
    for row, (_, _, preds) in zip(rows, loaded):
        labels = [p["label"] for p in preds]
        predictions = [p["prediction"] for p in preds]
        models.append({"name": row["name"], "labels": labels, "preds": predictions, "scores": _scores(preds),
                       "precision": row["precision"], "recall": row["recall"], "f1": row["f1"],
                       "size_bytes": row["size_bytes"], "ci": stats.bootstrap_metric_ci(labels, predictions)})
    return write_plots(models, baseline, plot_dir)
