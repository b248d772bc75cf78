"""The margin threshold compare fits for a quantized checkpoint, kept beside it so deployment uses that number.

compare writes <checkpoint>/fraudq_threshold.json: the threshold (fraud when margin > threshold), the checkpoint's
fingerprint, the rows it was fitted on (file, sha256, count), the baseline and the recall it restores.
`fraudq eval --threshold fitted` reads it back; a plain `eval` uses --threshold or the config's `threshold`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import fraudq
from fraudq.atomic import atomic_write_json
from fraudq.checkpoint import fingerprint, inspect_model
from fraudq.config import Config
from fraudq.console import shown
from fraudq.errors import BadInput

FILE = "fraudq_threshold.json"


def threshold_file(model: str | Path) -> Path:
    return Path(model) / FILE


def write_fitted(table: dict, loaded, cfg: Config, log) -> list[Path]:
    """One threshold file per quantized model of the table whose checkpoint is still the one evaluated."""
    fitted = table.get("fitted")
    if not fitted:
        return []
    by_name = {m["name"]: m for m in fitted["models"]}
    base = by_name[fitted["baseline"]]
    written = []
    for name, result, _ in loaded:
        folder = Path(result["model"])
        if result.get("quantization") is None or not (folder / "config.json").is_file():
            continue
        if fingerprint(inspect_model(folder, cfg.trust_remote_code, cfg.allow_pickle)) != result["model_fingerprint"]:
            log(f"note: {shown(folder)} changed since it was evaluated; its threshold file was not written")
            continue
        model = by_name[name]
        record = {
            "threshold": model["threshold"], "rule": "fraud when margin > threshold",
            "model_fingerprint": result["model_fingerprint"],
            "fitted_on": {"data": fitted["fit_data"], "data_sha256": fitted["fit_data_sha256"],
                          "rows": fitted["fit_rows"], "same_rows_as_compare": fitted["same_rows"]},
            "target_recall": fitted["target_recall"],
            "baseline": {"name": fitted["baseline"], "model": table_model(table, fitted["baseline"]),
                         "operating_threshold": fitted["baseline_threshold"], "fitted_threshold": base["threshold"]},
            "on_fitting_rows": {k: model["on_fit"][k] for k in ("precision", "recall", "f1")},
            "fraudq": fraudq.__version__,
        }
        atomic_write_json(threshold_file(folder), record)
        written.append(threshold_file(folder))
    return written


def table_model(table: dict, name: str) -> str | None:
    return next((m["model"] for m in table["models"] if m["name"] == name), None)


def read_fitted(model: str | Path, cfg: Config) -> dict:
    """The threshold file of this checkpoint, refused when it was fitted for other weights."""
    path = threshold_file(model)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(record["threshold"])
    except FileNotFoundError:
        raise BadInput(f"--threshold fitted: {path} does not exist; run 'fraudq compare' on this model first") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"--threshold fitted: {path} is damaged; run 'fraudq compare' again") from None
    info = inspect_model(model, cfg.trust_remote_code, cfg.allow_pickle)
    if record.get("model_fingerprint") != fingerprint(info):
        raise BadInput(f"--threshold fitted: {path} was fitted for other weights than {model}; run 'fraudq compare' "
                       "again")
    if threshold != threshold or abs(threshold) == float("inf"):
        raise BadInput(f"--threshold fitted: {path} holds no finite threshold")
    return record


def eval_threshold(cfg: Config, model: str, flag: str | None) -> tuple[Config, dict]:
    """The threshold eval uses: --threshold NUMBER, --threshold fitted (the file beside the checkpoint), or the
    config's `threshold`; with where it came from, for the results file."""
    if flag is None:
        return cfg, {"from": "config"}
    if flag.strip().lower() != "fitted":
        try:
            value = float(flag)
        except ValueError:
            raise BadInput(f"--threshold must be a number or 'fitted', got {flag!r}") from None
        if value != value or abs(value) == float("inf"):
            raise BadInput(f"--threshold must be a finite number, got {flag}")
        return dataclasses.replace(cfg, threshold=value), {"from": "flag"}
    record = read_fitted(model, cfg)
    fitted_on = record.get("fitted_on") or {}
    return dataclasses.replace(cfg, threshold=float(record["threshold"])), {
        "from": "fitted", "file": str(threshold_file(model)), "data": fitted_on.get("data"),
        "data_sha256": fitted_on.get("data_sha256"), "target_recall": record.get("target_recall"),
        "baseline": (record.get("baseline") or {}).get("name")}
