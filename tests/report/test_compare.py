"""compare's table, fitted thresholds, verdict and terminal layout on hand-built results; no model is loaded."""

from __future__ import annotations

import pytest

from fraudq.report.compare import build_table
from fraudq.report.metrics import roc_auc
from fraudq.report.render import log_table, log_verdict, to_markdown

from helpers import BASE, LABELS, OTHER


def loaded_item(name, scores, labels=LABELS, quant=None, dtype="bfloat16", sha="a" * 64, threshold=0.0):
    preds = [{"id": str(i), "label": y, "prediction": s > threshold, "score": s}
             for i, (y, s) in enumerate(zip(labels, scores))]
    c = {"tn": 0, "fp": 0, "fn": 0, "tp": 0, "invalid": 0}
    for p in preds:
        c[("t" if p["prediction"] == p["label"] else "f") + ("p" if p["prediction"] else "n")] += 1
    precision, recall = c["tp"] / max(1, c["tp"] + c["fp"]), c["tp"] / max(1, c["tp"] + c["fn"])
    result = {"model": f"/models/{name}", "quantization": quant, "dtype": dtype, "threshold": threshold,
              "data": "test.jsonl", "data_sha256": sha, "eval_config": {"mode": "score"}, "confusion": c,
              "precision": precision, "recall": recall, "f1": 2 * precision * recall / ((precision + recall) or 1),
              "accuracy": (c["tp"] + c["tn"]) / len(preds), "auc": roc_auc(labels, scores), "size_bytes": 1000,
              "samples_per_s": 10.0, "memory": {"peak_rss_gb": 1.0}}
    return name, result, preds


def table_of(*others, fit=None):
    return build_table([loaded_item("fp16", BASE), *others], seed=0, fit=fit)


def test_baseline_and_models_read_off_their_own_curves():
    table = table_of(loaded_item("int4", OTHER, quant={"bits": 4}))
    base, int4 = table["models"]
    assert table["targets"] == {"recall": 0.75, "precision": 0.5, "threshold": 0.0}
    assert base["precision"] == 0.5 and base["precision_at_recall"] == 0.6  # its operating point vs its curve
    assert int4["precision_at_recall"] == 0.8 and base["recall_at_precision"] == int4["recall_at_precision"] == 1.0
    paired = int4["vs_baseline"]
    assert paired["delta"]["precision_at_recall"] == pytest.approx(0.2)
    boot = paired["bootstrap"]["precision_at_recall"]
    assert boot["delta"] == pytest.approx(0.2) and boot["lo"] <= boot["hi"]
    assert {"auc", "recall_at_precision", "brier"} <= set(paired["bootstrap"])
    assert base["label"] == "fp16 (bf16, baseline)" and int4["label"] == "int4 (bf16)"
    assert base["ties"] == {"distinct_margins": 6, "tied_rows": 4, "at_threshold": 0}


def test_identical_model_shows_zero_difference_everywhere():
    table = table_of(loaded_item("same", list(BASE), quant={"bits": 8}))
    boot = table["models"][1]["vs_baseline"]["bootstrap"]
    assert all(v["delta"] == v["lo"] == v["hi"] == 0.0 for v in boot.values()), boot
    assert table["models"][1]["vs_baseline"]["delta"]["ece"] == 0.0


def test_fitted_thresholds_restore_the_baseline_recall_on_the_fitting_rows():
    table = table_of(loaded_item("int4", OTHER, quant={"bits": 4}))
    fitted = table["fitted"]
    assert fitted["same_rows"] and fitted["target_recall"] == 0.75
    by_name = {m["name"]: m for m in fitted["models"]}
    assert by_name["fp16"]["threshold"] == 0.75 and by_name["int4"]["threshold"] == 0.5
    for name, scores in (("fp16", BASE), ("int4", OTHER)):
        t = by_name[name]["threshold"]
        hits = sum(y and s > t for y, s in zip(LABELS, scores))
        assert hits / sum(LABELS) >= 0.75 and by_name[name]["on_fit"]["recall"] == hits / sum(LABELS)
    assert by_name["int4"]["flips"]["total"] == sum(
        (b > 0.75) != (o > 0.5) for b, o in zip(BASE, OTHER))


def test_thresholds_fitted_on_other_rows_are_reported_on_the_test_rows():
    fit_labels = [True, True, False, False]
    fit = [loaded_item("fp16", [2.0, 1.0, 0.5, -1.0], fit_labels, sha="b" * 64),
           loaded_item("int4", [3.0, 0.2, 0.1, -1.0], fit_labels, quant={"bits": 4}, sha="b" * 64)]
    table = table_of(loaded_item("int4", OTHER, quant={"bits": 4}), fit=fit)
    fitted = table["fitted"]
    assert not fitted["same_rows"] and fitted["fit_rows"] == 4 and fitted["target_recall"] == 1.0
    int4 = next(m for m in fitted["models"] if m["name"] == "int4")
    assert int4["threshold"] == pytest.approx(0.15)  # halfway between its lowest fraud and the next margin
    assert int4["on_rows"]["recall"] == sum(y and s > 0.15 for y, s in zip(LABELS, OTHER)) / sum(LABELS)


def test_terminal_output_fits_120_columns_and_markdown_keeps_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")  # wider terminals still get at most 120
    table = table_of(loaded_item("int8", list(BASE), quant={"bits": 8}),
                     loaded_item("a-long-model-name-int4", OTHER, quant={"bits": 4}, dtype="float16"))
    lines = []
    log_table(table, lines.append)
    log_verdict(table, lines.append)
    text = "\n".join(lines).splitlines()
    assert max(map(len, text)) <= 120, max(text, key=len)
    assert any("P@R" in line for line in text) and any(line.startswith("verdict:") for line in text)
    assert any("bfloat16 and a-long-model-name-int4 in float16" in line for line in text)  # the dtype note
    monkeypatch.setenv("COLUMNS", "80")
    narrow = []
    log_table(table, narrow.append)
    assert max(map(len, "\n".join(narrow).splitlines())) <= 80
    markdown = to_markdown(table, tmp_path)
    for column in ("PR-AUC", "Brier", "ECE", "ΔP@R", "ΔR@P", "ΔAUC", "size MB", "rows/s", "peak GB"):
        assert f" {column} |" in markdown, column
    assert "## Verdict" in markdown and "int8: no answer changed" in markdown


def test_fitting_rows_without_fraud_are_refused():
    from fraudq.errors import BadInput

    fit = [loaded_item("fp16", [1.0, -1.0], [False, False], sha="b" * 64),
           loaded_item("int4", [1.0, -1.0], [False, False], quant={"bits": 4}, sha="b" * 64)]
    with pytest.raises(BadInput, match="no fraud row"):
        table_of(loaded_item("int4", OTHER, quant={"bits": 4}), fit=fit)
