"""Several models' results side by side against a baseline, with paired statistics; never evaluates.

Input is what eval wrote: (name, results, predictions) per model, as workspace.load_results reads them.
"""

from __future__ import annotations

from pathlib import Path

from fraudq.errors import BadInput
from fraudq.report import stats
from fraudq.report.metrics import average_precision

METRICS = ("precision", "recall", "f1", "accuracy", "auc")
Loaded = tuple[str, dict, list[dict]]  # model name, its results, its predictions


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


def model_row(name: str, result: dict, predictions: list[dict]) -> dict:
    labels = [p["label"] for p in predictions]
    scores = [p["score"] for p in predictions]
    has_scores = all(s is not None for s in scores)
    return {
        "name": name,
        "model": result["model"],
        "bits": (result.get("quantization") or {}).get("bits"),
        **{k: result.get(k) for k in METRICS},
        "pr_auc": average_precision(labels, scores) if has_scores else None,
        "confusion": result["confusion"],
        "size_bytes": result.get("size_bytes"),
        "samples_per_s": result.get("samples_per_s"),
        "peak_memory_gb": (result.get("memory") or {}).get("peak_gpu_gb", (result.get("memory") or {}).get("peak_rss_gb")),
        "kernel": result.get("kernel"),
    }


def paired_row(base_preds: list[dict], other_preds: list[dict], base: dict, row: dict, seed: int) -> dict:
    labels = [p["label"] for p in base_preds]
    base_y = [p["prediction"] for p in base_preds]
    other_y = [p["prediction"] for p in other_preds]
    paired = {
        "delta": {k: _diff(row[k], base[k]) for k in METRICS + ("pr_auc",)},
        "flips": stats.flips(labels, base_y, other_y),
        "bootstrap": stats.bootstrap_deltas(labels, base_y, other_y, n_resamples=1000, seed=seed),
    }
    base_scores = [p["score"] for p in base_preds]
    other_scores = [p["score"] for p in other_preds]
    if None not in base_scores and None not in other_scores:
        paired["margin_shift"] = stats.margin_shift(base_scores, other_scores)
        paired["at_matched_recall"] = stats.precision_at_recall(labels, other_scores, base["recall"])
    return paired


def _diff(value, base):
    return None if value is None or base is None else value - base


def build_table(loaded: list[Loaded], seed: int) -> dict:
    """The comparison of loaded results: one row per model, paired statistics against the baseline."""
    check_comparable(loaded)
    base_index = pick_baseline(loaded)
    base_name, _, base_preds = loaded[base_index]
    rows = [model_row(*item) for item in loaded]
    for row, (name, _, preds) in zip(rows, loaded):
        if name != base_name:
            row["vs_baseline"] = paired_row(base_preds, preds, rows[base_index], row, seed)
    return {"baseline": base_name, "data_sha256": loaded[0][1].get("data_sha256"),
            "eval_config": loaded[0][1].get("eval_config"), "rows": len(base_preds), "models": rows}


def write_compare_plots(loaded, rows, baseline: str, plot_dir: Path) -> list[Path]:
    from fraudq.report.plots import write_plots

    models = []
    for row, (_, _, preds) in zip(rows, loaded):
        labels = [p["label"] for p in preds]
        scores = [p["score"] for p in preds]
        predictions = [p["prediction"] for p in preds]
        models.append({"name": row["name"], "labels": labels, "preds": predictions,
                       "scores": scores if None not in scores else None,
                       "precision": row["precision"], "recall": row["recall"], "f1": row["f1"],
                       "size_bytes": row["size_bytes"], "ci": stats.bootstrap_metric_ci(labels, predictions)})
    return write_plots(models, baseline, plot_dir)
