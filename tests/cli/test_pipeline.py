"""`fraudq run` (resumable by content hashes) and `fraudq demo`, on the tiny CPU model."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import CALIB_ROWS, run_cli
from helpers import own_work_config

STAGES = ["calib", "quantize-int8", "quantize-int4", "eval-fp16", "eval-int8", "eval-int4", "compare"]


def stage_status(output: str) -> dict[str, str]:
    """{stage: 'ran' | 'skipped'} from the '[3/7] quantize-int4  ran (...)' lines."""
    status = {}
    for line in output.splitlines():
        match = re.match(r"\[\d+/\d+\] (\S+)\s+(ran|skipped)", line)
        if match:
            status[match.group(1)] = match.group(2)
    return status


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def first_run(project, tmp_path_factory):
    """One whole `fraudq run` in a work dir of its own (the shared runs/ folder is left alone)."""
    root = tmp_path_factory.mktemp("pipeline")
    config = own_work_config(project, root, "run.toml")
    result = run_cli("run", "--config", config)
    return root, config, result


def test_run_does_every_stage_and_writes_the_report(first_run):
    root, _, result = first_run
    assert result.exit_code == 0, result.output
    assert stage_status(result.stdout) == dict.fromkeys(STAGES, "ran")
    work = root / "runs"
    for artifact in ("calib.jsonl", "int8", "int4", "compare"):
        assert (work / f"{artifact}.stamp.json").is_file(), artifact
    for name in ("fp16", "int8", "int4"):
        assert read_json(work / "eval" / f"{name}.json")["eval_config"]["mode"] == "score"
    table = read_json(work / "compare" / "compare.json")
    assert table["baseline"] == "fp16" and [m["name"] for m in table["models"]] == ["fp16", "int8", "int4"]
    int4 = table["models"][2]["vs_baseline"]
    assert {"flips", "bootstrap", "margin_shift"} <= set(int4)
    assert {"precision_at_recall", "recall_at_precision", "auc", "brier"} <= set(int4["bootstrap"])
    assert (work / "int4" / "fraudq_threshold.json").is_file() and "fitted" in table
    markdown = (work / "compare" / "compare.md").read_text(encoding="utf-8")
    for png in ("metrics", "pr_curves", "size_vs_f1", "margins"):
        assert (work / "compare" / "plots" / f"{png}.png").stat().st_size > 10_000
        assert f"(plots/{png}.png)" in markdown
    assert "fp16 (bf16, baseline)" in result.stdout and "margin shift mean" in result.stdout
    # GPTQModel's chatter lands in the stage's log under the work dir, not on the terminal.
    assert "INFO  " in (work / "logs" / "quantize-int4.log").read_text(encoding="utf-8")
    assert "INFO  " not in result.output


def test_second_run_skips_every_stage(first_run):
    _, config, _ = first_run
    again = run_cli("run", "--config", config)
    assert again.exit_code == 0, again.output
    assert stage_status(again.stdout) == dict.fromkeys(STAGES, "skipped")
    assert "skipped 7 of 7 stages" in again.stdout
    assert "fp16 (bf16, baseline)" in again.stdout and "verdict:" in again.stdout  # the stored table again


def test_force_reruns_one_stage_and_downstream_goes_by_hash(first_run):
    root, config, _ = first_run
    work = root / "runs"
    before = read_json(work / "int4.stamp.json")
    forced = run_cli("run", "--config", config, "--force", "quantize-int4")
    assert forced.exit_code == 0, forced.output
    status = stage_status(forced.stdout)
    assert status.pop("quantize-int4") == "ran" and "(forced)" in forced.stdout
    # GPTQ on CPU is deterministic: the new int4 has the old bytes, so its eval is still current.
    assert read_json(work / "int4.stamp.json")["output_sha256"] == before["output_sha256"]
    assert read_json(work / "eval" / "int4.json")["model_fingerprint"] == before["output_sha256"]
    # Only compare reruns: the new folder lacks the threshold file compare writes beside the checkpoint.
    assert status.pop("compare") == "ran" and "threshold file missing in int4" in forced.stdout
    assert (work / "int4" / "fraudq_threshold.json").is_file()
    assert set(status.values()) == {"skipped"}


def test_changed_calibration_reruns_everything_downstream(first_run):
    root, config, _ = first_run
    work = root / "runs"
    old_int8 = read_json(work / "int8.stamp.json")["output_sha256"]
    changed = run_cli("run", "--config", config, env={"FRAUDQ_CALIB_N": str(CALIB_ROWS // 2)})
    assert changed.exit_code == 0, changed.output
    assert stage_status(changed.stdout) == {**dict.fromkeys(STAGES, "ran"), "eval-fp16": "skipped"}
    assert "calib          ran (config changed)" in changed.stdout
    assert "quantize-int8  ran (calib changed)" in changed.stdout
    assert read_json(work / "int8.stamp.json")["output_sha256"] != old_int8
    assert read_json(work / "eval" / "int8.json")["model_fingerprint"] != old_int8


def test_unknown_stage_is_one_line(first_run):
    _, config, _ = first_run
    result = run_cli("run", "--config", config, "--force", "quantise")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown stage 'quantise'" in result.stderr


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli("demo", "--out", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_demo_end_to_end_then_resumes(tmp_path, monkeypatch):
    """The README's first command, with fewer rows and steps (hidden options) to fit the test budget."""
    monkeypatch.chdir(tmp_path)
    small = ("--train-rows", "48", "--test-rows", "24", "--epochs", "0.5")
    result = run_cli("demo", *small, env={"FRAUDQ_MODEL": "/nonexistent"})  # the demo ignores FRAUDQ_*
    assert result.exit_code == 0, result.output
    out = tmp_path / "fraudq-demo"
    assert stage_status(result.stdout) == dict.fromkeys(STAGES, "ran")
    assert "train          ran" in result.stdout and "fp16 (bf16, baseline)" in result.stdout
    assert "fraudq-demo/runs/compare/compare.md" in result.stdout  # shown relative to the working folder
    # The whole terminal output fits a 120-column terminal.
    lines = (result.stdout + result.stderr).splitlines()
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    for split, rows in (("train", 48), ("test", 24)):
        assert len((out / "data" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()) == rows
    assert read_json(out / "runs" / "compare" / "compare.json")["rows"] == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fraudq-demo"]  # nothing else in the user's folder

    again = run_cli("demo", *small)
    assert again.exit_code == 0, again.output
    assert "train          skipped" in again.stdout
    assert stage_status(again.stdout) == dict.fromkeys(STAGES, "skipped")
    shutil.rmtree(out)
