"""Hostile checkpoints and data: templates, claimed sizes and rows that would take all memory or time.

Each refusal must come before the allocation, so the memory bombs run under an address-space limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli
from helpers import copy_model, rows_of, write_rows

# Far below what a bomb asks for, well above what the CLI needs to load the tiny model and refuse.
ADDRESS_SPACE_LIMIT = 12 << 30


def set_template(model: Path, template: str) -> None:
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_path.write_text(json.dumps(config), encoding="utf-8")
    (model / "chat_template.jinja").unlink(missing_ok=True)


def run_limited(*args: str) -> subprocess.CompletedProcess:
    """The real CLI in a child process under an address-space limit."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "fraudq", *map(str, args)], capture_output=True, text=True,
                          env=env, preexec_fn=limit, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fraudq: error:"), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_template_memory_bomb_is_refused_before_it_allocates(project, tmp_path):
    model = copy_model(project, tmp_path)
    set_template(model, "{{ 'A' * 4000000000 }}")
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    proc = run_limited("calib", "--config", project.config, "--model", model, "--data", data,
                       "--out", tmp_path / "c.jsonl")
    assert_one_line(proc, "chat template", "bound")
    assert not (tmp_path / "c.jsonl").exists()


def refused_template_seconds(project, tmp_path, template: str, command: str, out: Path, *needles: str) -> float:
    """Runs `command` on a copy of the model with `template`: one line naming each needle, no output; returns
    how long the refusal took."""
    model = copy_model(project, tmp_path)
    set_template(model, template)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    start = time.perf_counter()
    one_line_error(run_cli(command, "--config", project.config, "--model", model, "--data", data, "--out", out),
                   *needles)
    assert not out.exists()
    return time.perf_counter() - start


def test_template_output_bomb_in_eval_is_refused(project, tmp_path):
    seconds = refused_template_seconds(project, tmp_path, "{% for m in messages %}{{ m['content'] * 100000 }}{% endfor %}",
                                       "eval", tmp_path / "r.json", "chat template", "bound")
    assert seconds < 60


def test_template_time_bomb_is_stopped(project, tmp_path, monkeypatch):
    from fraudq import prompts

    monkeypatch.setattr(prompts, "TEMPLATE_SECONDS", 0.5)
    seconds = refused_template_seconds(
        project, tmp_path, "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "calib", tmp_path / "c.jsonl", "chat template", "ran longer")
    assert seconds < 30


def test_template_rejected_by_the_sandbox_is_bad_input(project, tmp_path):
    model = copy_model(project, tmp_path)
    set_template(model, "{{ messages.__class__.__mro__ }}")
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    one_line_error(run_cli("calib", "--config", project.config, "--model", model, "--data", data,
                           "--out", tmp_path / "c.jsonl"), "chat template", "SecurityError")


def test_claimed_layer_count_is_checked_against_the_weights(project, tmp_path):
    model = copy_model(project, tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = 1000000
    (model / "config.json").write_text(json.dumps(config))
    proc = run_limited("load", model)
    assert_one_line(proc, "claims num_hidden_layers 1000000", "weights hold 2")


def test_row_past_the_byte_bound_is_refused_before_parsing(project, tmp_path):
    from fraudq.data import MAX_ROW_BYTES

    rows = rows_of(project.test, 3)
    rows[1]["input"] = "x" * (MAX_ROW_BYTES + 10)
    data = write_rows(tmp_path / "d.jsonl", rows)
    for command in ("calib", "eval"):
        one_line_error(run_cli(command, "--config", project.config, "--data", data, "--out", tmp_path / "o"),
                       "d.jsonl:2", "longer than")
    skipped = run_cli("calib", "--config", project.config, "--data", data, "--out", tmp_path / "c.jsonl",
                      "--skip-invalid")
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1" in skipped.output or '"invalid": 1' in (tmp_path / "c.jsonl.meta.json").read_text()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_weights_linked_to_a_fifo_or_device_are_refused(project, tmp_path, kind):
    model = copy_model(project, tmp_path)
    (model / "model.safetensors").unlink()
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")
        target = tmp_path / "pipe"
    else:
        target = Path("/dev/zero")
    (model / "model.safetensors").symlink_to(target)
    one_line_error(run_cli("load", model), "not a regular file", str(target))


def test_index_naming_shards_outside_the_folder_is_refused(project, tmp_path):
    model = copy_model(project, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (model / "model.safetensors").rename(elsewhere / "model.safetensors")
    index = {"weight_map": {"lm_head.weight": "../elsewhere/model.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(run_cli("load", model), "outside the model folder")


def test_shard_missing_from_the_index_is_bad_input(project, tmp_path):
    model = copy_model(project, tmp_path)
    index = {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(run_cli("load", model), "model-00002-of-00002.safetensors", "missing")


def test_truncated_weights_are_bad_input(project, tmp_path):
    model = copy_model(project, tmp_path)
    weights = model / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    one_line_error(run_cli("load", model), "truncated or damaged")


def test_row_longer_than_the_context_keeps_head_and_tail(project, tmp_path):
    """A row past the model's 2,048-token context is cut in the middle, scored and counted, not a crash."""
    rows = rows_of(project.test, 3)
    rows[1]["input"] = rows[1]["input"] * 80
    data = write_rows(tmp_path / "d.jsonl", rows)
    out = tmp_path / "r.json"
    result = run_cli("eval", "--config", project.config, "--model", project.model, "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    assert "1 rows are longer than the model's context of 2048 tokens" in result.output
    saved = json.loads(out.read_text())
    assert saved["rows"] == 3 and saved["truncated_rows"] == 1
    predictions = (tmp_path / "r.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 3 and all(json.loads(p)["score"] is not None for p in predictions)
