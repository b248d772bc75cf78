"""Bad input ends in one line on stderr and exit code 2, with nothing written."""

from __future__ import annotations

import json

from conftest import one_line_error, run_cli


def test_missing_data_file(project, tmp_path):
    result = run_cli("calib", "--config", project.config, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "c.jsonl")
    one_line_error(result, "nope.jsonl", "does not exist")
    assert not (tmp_path / "c.jsonl").exists()


def test_model_that_is_not_a_local_folder(project, tmp_path):
    result = run_cli("load", "Qwen/Qwen2-1.5B-Instruct", "--config", project.config)
    one_line_error(result, "does not exist", "never a hub")


def test_quantize_without_gpu_needs_device_cpu(project, tmp_path):
    result = run_cli("quantize", "--bits", "8", "--config", project.config, "--device", "cuda",
                     "--out", tmp_path / "q")
    one_line_error(result, "no GPU", "--device cpu")
    assert not (tmp_path / "q").exists()


def test_quantize_refuses_to_overwrite_without_force(quantized):
    target = quantized.work / "int8"
    before = (target / "quant_report.json").read_bytes()
    result = run_cli("quantize", "--bits", "8", "--config", quantized.config)
    one_line_error(result, "already exists", "--force")
    assert (target / "quant_report.json").read_bytes() == before


def test_bad_quantize_settings(quantized, tmp_path):
    out = ("--out", tmp_path / "q")
    one_line_error(run_cli("quantize", "--bits", "5", "--config", quantized.config, *out), "--bits")
    one_line_error(run_cli("quantize", "--bits", "4", "--group-size", "96", "--config", quantized.config, *out),
                          "--group-size 96")
    one_line_error(run_cli("quantize", "--bits", "4", "--damp", "1.5", "--config", quantized.config, *out),
                          "--damp")
    assert not (tmp_path / "q").exists()


def test_malformed_json_names_file_and_line(project, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"input": "a", "label": true}\n{"input": "b", "label": \n', encoding="utf-8")
    result = run_cli("eval", "--model", project.model, "--data", data, "--config", project.config,
                     "--out", tmp_path / "r.json")
    one_line_error(result, "bad.jsonl:2", "malformed JSON")
    assert not (tmp_path / "r.json").exists()


def test_compare_unknown_name_lists_known_ones(quantized):
    result = run_cli("compare", "int3", "fp16", "--config", quantized.config)
    one_line_error(result, "int3", "known names", "fp16", "int8")


def test_invalid_label_is_refused(project, tmp_path):
    data = tmp_path / "labels.jsonl"
    data.write_text(json.dumps({"input": "x", "label": "maybe"}) + "\n", encoding="utf-8")
    result = run_cli("eval", "--model", project.model, "--data", data, "--config", project.config,
                     "--out", tmp_path / "r.json")
    one_line_error(result, "labels.jsonl:1", "label")
