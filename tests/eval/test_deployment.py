"""The deployment check compares one checkpoint's predictions under two runtimes, row by row."""

from __future__ import annotations

from fraudq.report.deployment import deployment_check, deployment_lines


def rows(scores, ids=None):
    return [{"id": i, "label": True, "prediction": s > 0, "score": s} for i, s in zip(ids or range(len(scores)), scores)]


def test_identical_answers_serve_unchanged():
    check = deployment_check("int4", rows([1.0, -2.0, 0.5]), rows([1.02, -1.9, 0.45]))
    assert check["flips"] == 0 and check["verdict"] == "serves unchanged in vLLM"
    assert abs(check["largest_margin_difference"] - 0.1) < 1e-9


def test_a_flipped_row_is_counted_and_named():
    check = deployment_check("int4", rows([1.0, 0.01, 0.5]), rows([1.0, -0.01, 0.5]))
    assert check["flips"] == 1 and check["verdict"] == "1 of 3 answers differ in vLLM"
    assert deployment_lines([check]) == ["int4: 1 of 3 answers differ in vLLM (1 of 3 rows flipped; "
                                         "largest margin difference 0.0200)"]


def test_other_rows_are_not_compared():
    check = deployment_check("int4", rows([1.0, 2.0]), rows([1.0, 2.0], ids=[5, 6]))
    assert check["comparable"] is False and "same --limit" in deployment_lines([check])[0]
