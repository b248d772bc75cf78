"""Bad input, interruptions and trust. docs/RELIABILITY.md maps each case to the tests here.

Bad input ends in one line on stderr and exit 2 with nothing written; a killed run leaves nothing that looks
complete; the CLI never runs checkpoint code or unpickles weights unless told to, writes no dialogue text,
respects the umask and never touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli
from helpers import copy_model, leftovers, rows_of, tree_digest, write_rows

CANARY_CALIB = "金丝雀校准句子CANARY-CALIB-7f3a，请勿外泄"
CANARY_TEST = "金丝雀测试句子CANARY-TEST-91c2，请勿外泄"


# ---------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def calib_and_eval_refuse(project, data: Path, tmp_path: Path, *needles: str) -> None:
    """Both readers of labelled data stop on `data` with the same one-line error and write nothing."""
    for command in ("calib", "eval"):
        out = tmp_path / f"{command}.out"
        result = run_cli(command, "--config", project.config, "--model", project.model, "--data", data, "--out", out)
        one_line_error(result, *needles)
        assert not out.exists()


# ---------------------------------------------------------------- data files and rows


@pytest.mark.parametrize("command", ["calib", "eval"])
@pytest.mark.parametrize("kind", ["missing", "empty", "blank", "not-utf8", "folder"])
def test_data_file_missing_empty_or_not_utf8(project, tmp_path, command, kind):
    data = tmp_path / "data.jsonl"
    if kind == "empty":
        data.write_bytes(b"")
    elif kind == "blank":
        data.write_bytes(b"\n  \n\r\n")
    elif kind == "not-utf8":
        data.write_bytes(json.dumps({"input": "abc", "label": True}).encode() + b"\n" +
                         b'{"input": "' + "诈骗电话".encode("gbk") + b'\xff", "label": true}\n')
    elif kind == "folder":
        data.mkdir()
    out = tmp_path / "out" / ("c.jsonl" if command == "calib" else "r.json")
    result = run_cli(command, "--config", project.config, "--data", data, "--out", out)
    needle = {"missing": "does not exist", "empty": "no usable rows", "blank": "no usable rows",
              "not-utf8": "not UTF-8", "folder": "not a file"}[kind]
    one_line_error(result, "data.jsonl", needle)
    assert not (tmp_path / "out").exists()


def test_malformed_json_in_calib_names_file_and_line(project, tmp_path):
    rows = rows_of(project.train, 4)
    data = write_rows(tmp_path / "bad.jsonl", rows, {3: '{"input": "x", "label": tru'})
    result = run_cli("calib", "--config", project.config, "--data", data, "--out", tmp_path / "c.jsonl")
    one_line_error(result, "bad.jsonl:3", "malformed JSON")
    assert not list(tmp_path.glob("c.jsonl*"))


def test_line_numbers_count_newlines_only(project, tmp_path):
    """U+2028 and U+0085 are legal inside JSON strings: they neither split a row nor shift line numbers."""
    rows = rows_of(project.test, 4)
    rows[0]["input"] += "\u2028第二段\u0085第三段"
    data = write_rows(tmp_path / "seps.jsonl", rows)
    out = tmp_path / "r.json"
    ok = run_cli("eval", "--config", project.config, "--model", project.model, "--data", data, "--out", out)
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["rows"] == 4
    bad = write_rows(tmp_path / "seps-bad.jsonl", rows, {3: "{oops"})
    one_line_error(run_cli("eval", "--config", project.config, "--model", project.model, "--data", bad,
                           "--out", tmp_path / "r2.json"), "seps-bad.jsonl:3", "malformed JSON")


@pytest.mark.parametrize("line, needle", [
    ('{"input": "x", "label": ' + "1" * 5000 + "}", "malformed JSON"),
    ("[" * 100_000 + "]" * 100_000, "malformed JSON"),
    ('{"input": "x\\ud800", "label": true}', "lone surrogate"),
    ('{"input": "x", "label": true, "id": "\\udfff"}', "lone surrogate"),
    ('"just a string"', "expected a JSON object"),
])
def test_json_edge_cases_are_one_line_errors(project, tmp_path, line, needle):
    data = write_rows(tmp_path / "edge.jsonl", rows_of(project.test, 2), {2: line})
    calib_and_eval_refuse(project, data, tmp_path, "edge.jsonl:2", needle)


@pytest.mark.parametrize("row, needle", [
    ({"instruction": "i", "label": True}, "'input'"),
    ({"input": "甲: 你好", "instruction": "i"}, "'label'"),
    ({"input": 42, "label": False}, "'input'"),
    ({"input": "甲: 你好", "label": True, "instruction": ["x"]}, "'instruction'"),
])
def test_row_missing_field_names_line_and_field(project, tmp_path, row, needle):
    data = write_rows(tmp_path / "rows.jsonl", [*rows_of(project.test, 2), row])
    calib_and_eval_refuse(project, data, tmp_path, "rows.jsonl:3", needle)


@pytest.mark.parametrize("bad, needle", [
    ({"id": "x"}, "'messages'"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "unknown role 'bot'"),
    ({"messages": [{"role": "user"}]}, "'content'"),
    ({"messages": []}, "'messages'"),
])
def test_chat_row_missing_messages_or_unknown_role(project, tmp_path, bad, needle):
    good = {"messages": [{"role": "user", "content": "甲: 你好"}, {"role": "assistant", "content": "{}"}]}
    data = write_rows(tmp_path / "chat.jsonl", [good, good, bad])
    result = run_cli("calib", "--config", project.config, "--data", data, "--out", tmp_path / "c.jsonl")
    one_line_error(result, "chat.jsonl:3", needle)
    assert not list(tmp_path.glob("c.jsonl*"))


def test_skip_invalid_skips_and_reports_count(project, tmp_path):
    rows = rows_of(project.test, 10)
    data = write_rows(tmp_path / "mixed.jsonl", rows, {
        2: '{"input": "x", "label": "maybe"}', 5: '{"label": true}', 9: "{broken"})
    calib_out = tmp_path / "c.jsonl"
    calib = run_cli("calib", "--config", project.config, "--data", data, "--out", calib_out, "--n", "0",
                    "--skip-invalid")
    assert calib.exit_code == 0, calib.output
    assert "invalid 3" in calib.stdout
    meta = json.loads((tmp_path / "c.jsonl.meta.json").read_text())
    assert meta["stats"]["dropped"]["invalid"] == 3 and meta["stats"]["rows_kept"] == 7
    out = tmp_path / "r.json"
    ev = run_cli("eval", "--config", project.config, "--model", project.model, "--data", data, "--out", out,
                 "--skip-invalid")
    assert ev.exit_code == 0, ev.output
    assert "skipped 3 invalid rows" in ev.stdout
    result = json.loads(out.read_text())
    assert result["skipped_invalid"] == 3 and result["rows"] == 7
    # Without the flag the first bad row stops the run.
    one_line_error(run_cli("eval", "--config", project.config, "--model", project.model, "--data", data,
                           "--out", tmp_path / "r2.json"), "mixed.jsonl:2", "label")


def test_all_rows_empty_is_bad_input(project, tmp_path):
    data = write_rows(tmp_path / "empty-rows.jsonl", [{"input": "  ", "label": True}, {"input": "", "label": 0}])
    result = run_cli("calib", "--config", project.config, "--data", data, "--out", tmp_path / "c.jsonl")
    one_line_error(result, "no rows left", "2 empty")
    assert not list(tmp_path.glob("c.jsonl*"))


def test_labels_accept_booleans_and_0_1_only(project, tmp_path):
    from fraudq.data import parse_label
    from fraudq.errors import BadInput

    # Pairs, not a dict: 1 and True are the same dict key.
    accepted = [(True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False), ("1", True),
                ("0", False)]
    for value, expected in accepted:
        assert parse_label(value, "x") is expected
    for value in (2, -1, 1.0, 0.0, "yes", "no", "", None, [True], {"v": 1}, "truee"):
        with pytest.raises(BadInput, match="label must be true/false or 0/1"):
            parse_label(value, "x")
    # Through the CLI: every accepted spelling evaluates, with the labels it stands for.
    rows = rows_of(project.test, 6)
    for row, label in zip(rows, [True, False, 1, 0, "true", "0"]):
        row["label"] = label
    out = tmp_path / "ok.json"
    ok = run_cli("eval", "--config", project.config, "--model", project.model,
                 "--data", write_rows(tmp_path / "ok.jsonl", rows), "--out", out)
    assert ok.exit_code == 0, ok.output
    preds = [json.loads(line) for line in (tmp_path / "ok.predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in preds] == [True, False, True, False, True, False]
    for value in (2, "yes", None, 1.5):
        rows[3]["label"] = value
        data = write_rows(tmp_path / "labels.jsonl", rows)
        result = run_cli("eval", "--config", project.config, "--model", project.model, "--data", data,
                         "--out", tmp_path / "bad.json")
        one_line_error(result, "labels.jsonl:4", "label must be true/false or 0/1")
        assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------- models, settings, outputs


def _model_problem(project, tmp_path, kind) -> tuple[Path, str]:
    if kind == "missing":
        return tmp_path / "nowhere", "does not exist"
    if kind == "file":
        path = tmp_path / "weights.safetensors"
        path.write_bytes(b"x")
        return path, "not a model folder"
    if kind == "empty-folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", "not a model folder"
    model = copy_model(project, tmp_path)
    if kind == "config-not-json":
        (model / "config.json").write_text("{ nope", encoding="utf-8")
        return model, "not valid JSON"
    if kind == "config-without-model-type":
        (model / "config.json").write_text("{}", encoding="utf-8")
        return model, "not a model folder"
    if kind == "no-weights":
        for file in model.glob("*.safetensors"):
            file.unlink()
        return model, "no weight files"
    if kind == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer.model", "vocab.json"):
            (model / name).unlink(missing_ok=True)
        return model, "no tokenizer files"
    if kind == "damaged-tokenizer":
        (model / "tokenizer.json").write_text('{"version": "1.0", "model": 7}', encoding="utf-8")
        return model, "cannot load the tokenizer"
    if kind == "no-chat-template":
        (model / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((model / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (model / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        return model, "no chat template"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "file", "empty-folder", "config-not-json", "config-without-model-type",
                                  "no-weights", "no-tokenizer", "damaged-tokenizer", "no-chat-template"])
def test_model_path_problems(quantized, tmp_path, kind):
    project = quantized
    model, needle = _model_problem(project, tmp_path, kind)
    one_line_error(run_cli("load", model, "--config", project.config), needle)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 3))
    for command in ("calib", "eval"):
        out = tmp_path / "out" / f"{command}.json"
        result = run_cli(command, "--config", project.config, "--model", model, "--data", data, "--out", out)
        one_line_error(result, needle)
    out = tmp_path / "out" / "q"
    one_line_error(run_cli("quantize", "--bits", "4", "--config", project.config, "--model", model, "--out", out),
                   needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--bits", "0"], "--bits"), (["--bits", "1"], "--bits"), (["--bits", "5"], "--bits"),
    (["--bits", "16"], "--bits"),
    (["--bits", "4", "--group-size", "0"], "--group-size"), (["--bits", "4", "--group-size", "-2"], "--group-size"),
    (["--bits", "4", "--group-size", "96"], "--group-size 96"),
    (["--bits", "4", "--group-size", "512"], "--group-size 512"),
    (["--bits", "4", "--damp", "0"], "--damp"), (["--bits", "4", "--damp", "1"], "--damp"),
    (["--bits", "4", "--damp", "-0.1"], "--damp"), (["--bits", "4", "--damp", "nan"], "--damp"),
    (["--bits", "four"], "--bits"), (["--bits", "4", "--damp", "lots"], "--damp"),
])
def test_quantize_settings_out_of_range(quantized, tmp_path, flags, needle):
    one_line_error(run_cli("quantize", *flags, "--config", quantized.config, "--out", tmp_path / "q"), needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["quantize", "--bits", "four"], "Invalid value for '--bits'"),
    (["quantize"], "Missing option '--bits'"),
    (["eval", "--limit", "x"], "Invalid value for '--limit'"),
    (["eval", "--nope"], "No such option: --nope"),
    (["calib", "--n", "1.5"], "Invalid value for '--n'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_flag_parse_errors_are_one_line(args, needle):
    one_line_error(run_cli(*args), needle, "--help")


def test_quantize_settings_in_range_pass_validation(project):
    from fraudq.config import build_config
    from fraudq.checkpoint import inspect_model
    from fraudq.quant.quantize import validate_settings

    model_config = inspect_model(project.model).config
    for bits in (2, 3, 4, 8):
        for group_size in (-1, 32, 64, 128):
            for damp in (0.001, 0.01, 0.5, 0.999):
                cfg = build_config(overrides={"group_size": group_size, "damp": damp}, environ={})
                validate_settings(cfg, bits, model_config)


def test_existing_output_is_untouched_without_force(quantized, tmp_path):
    cfg = ("--config", quantized.config)
    calib = tmp_path / "calib.jsonl"
    calib.write_text("precious\n")
    one_line_error(run_cli("calib", *cfg, "--out", calib), "already exists", "--force")
    assert calib.read_text() == "precious\n" and not (tmp_path / "calib.jsonl.meta.json").exists()
    folder = tmp_path / "int8"
    shutil.copytree(quantized.work / "int8", folder)
    (folder / "mine.txt").write_text("keep me")
    before = tree_digest(folder)
    one_line_error(run_cli("quantize", "--bits", "8", *cfg, "--out", folder), "already exists", "--force")
    assert tree_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.jsonl", "int8"]


# ---------------------------------------------------------------- compare refuses to mix


def test_results_record_data_model_and_eval_config(project, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 6))
    out = tmp_path / "fp16.json"
    assert run_cli("eval", "--config", project.config, "--model", project.model, "--data", data,
                   "--out", out).exit_code == 0
    result = json.loads(out.read_text())
    assert result["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert len(result["model_fingerprint"]) == 64
    assert {"mode", "instruction", "answer_prefix", "true_word", "false_word", "limit"} <= set(result["eval_config"])


def _results_copy(src: Path, name: str, **changes) -> Path:
    result = json.loads(src.read_text())
    preds = src.with_name(result["predictions_file"])
    shutil.copy(preds, src.with_name(f"{name}.predictions.jsonl"))
    result["predictions_file"] = f"{name}.predictions.jsonl"
    for key, value in changes.items():
        if isinstance(value, dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    target = src.with_name(f"{name}.json")
    target.write_text(json.dumps(result))
    return target


def test_compare_refuses_other_data_or_eval_config(project, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 6))
    base = tmp_path / "res" / "base.json"
    assert run_cli("eval", "--config", project.config, "--model", project.model, "--data", data,
                   "--out", base).exit_code == 0
    same = _results_copy(base, "same")
    other_data = _results_copy(base, "otherdata", data_sha256="0" * 64)
    other_prompt = _results_copy(base, "otherprompt", eval_config={"instruction": "another prompt"})
    other_mode = _results_copy(base, "othermode", eval_config={"mode": "generate"})
    out = ("--out", tmp_path / "cmp")
    assert run_cli("compare", base, same, "--config", project.config, *out).exit_code == 0
    shutil.rmtree(tmp_path / "cmp")
    one_line_error(run_cli("compare", base, other_data, "--config", project.config, *out), "other data")
    one_line_error(run_cli("compare", base, other_prompt, "--config", project.config, *out), "eval config")
    one_line_error(run_cli("compare", base, other_mode, "--config", project.config, *out), "eval config")
    assert not (tmp_path / "cmp").exists()


def test_half_replaced_results_are_refused(project, tmp_path):
    """Results name their predictions by hash: a pair from two runs is refused, not mixed."""
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    out = tmp_path / "r.json"
    assert run_cli("eval", "--config", project.config, "--model", project.model, "--data", data,
                   "--out", out).exit_code == 0
    preds = tmp_path / "r.predictions.jsonl"
    preds.write_text(preds.read_text().replace('"label": true', '"label": false'))
    one_line_error(run_cli("compare", out, "--config", project.config, "--out", tmp_path / "cmp"),
                   "missing or damaged")


# ---------------------------------------------------------------- SIGKILL and Ctrl-C



@pytest.fixture(scope="module")
def interrupted(quantized, tmp_path_factory):
    """Runs every interrupted scenario at once in separate processes; hands back exit codes and logs."""
    base = tmp_path_factory.mktemp("interrupted")
    cfg = ["--config", str(quantized.config)]
    small_calib = base / "small" / "calib.jsonl"
    result = run_cli("calib", *cfg, "--n", "8", "--out", small_calib)
    assert result.exit_code == 0, result.output
    shutil.copytree(quantized.work / "int8", base / "force" / "int8")
    shutil.copytree(quantized.work / "int8", base / "swap" / "int8")
    for name in ("calib-kill", "calib-int", "calib-term", "calib-hup", "gptq-kill"):
        (base / name).mkdir()
    before = {"force": tree_digest(base / "force" / "int8"), "swap": tree_digest(base / "swap" / "int8")}
    quant = ["quantize", *cfg, "--calib", str(small_calib)]
    calib = ["calib", *cfg, "--n", "8", "--out"]
    runs = {  # name: (where it is stopped, signal, CLI arguments)
        "calib-kill": ("calib-rename", "SIGKILL", [*calib, str(base / "calib-kill" / "calib.jsonl")]),
        "calib-int": ("calib-rename", "SIGINT", [*calib, str(base / "calib-int" / "calib.jsonl")]),
        "calib-term": ("calib-rename", "SIGTERM", [*calib, str(base / "calib-term" / "calib.jsonl")]),
        "calib-hup": ("calib-rename", "SIGHUP", [*calib, str(base / "calib-hup" / "calib.jsonl")]),
        "gptq-kill": ("gptq", "SIGKILL", [*quant, "--bits", "4", "--out", str(base / "gptq-kill" / "int4")]),
        "save-kill": ("save", "SIGKILL", [*quant, "--bits", "8", "--force", "--out", str(base / "force" / "int8")]),
        "swap-kill": ("between-renames", "SIGKILL", [str(base / "swap" / "int8")]),
    }
    spec = {name: [*run, str(base / f"{name}.log")] for name, run in runs.items()}
    (base / "runs.json").write_text(json.dumps(spec))
    driver = Path(__file__).with_name("interrupt_driver.py")
    done = subprocess.run([sys.executable, str(driver), str(base / "runs.json"), str(base / "codes.json")],
                          cwd=base, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads((base / "codes.json").read_text())
    outcomes = {name: (codes[name], (base / f"{name}.log").read_text()) for name in runs}
    return base, outcomes, before, small_calib


def test_sigkill_during_calib_leaves_no_calibration_file(interrupted, quantized):
    base, outcomes, _, _ = interrupted
    code, log = outcomes["calib-kill"]
    assert code == -signal.SIGKILL, log[-3000:]
    folder = base / "calib-kill"
    assert not (folder / "calib.jsonl").exists()
    assert leftovers(folder), "the killed run's temp file should still be there for the next run to remove"
    # Nothing downstream takes the leftovers for a calibration set.
    one_line_error(run_cli("quantize", "--bits", "4", "--config", quantized.config, "--calib", folder / "calib.jsonl",
                           "--out", folder / "int4"), "does not exist", "fraudq calib")
    rerun = run_cli("calib", "--config", quantized.config, "--n", "8", "--out", folder / "calib.jsonl")
    assert rerun.exit_code == 0, rerun.output
    assert not leftovers(folder)
    from fraudq.calib import read_calibration

    rows, meta = read_calibration(folder / "calib.jsonl")
    assert len(rows) == 8 == meta["stats"]["rows_kept"]


def test_calib_pair_from_two_runs_is_refused(quantized, tmp_path):
    """A kill between the meta and body renames of `calib --force` leaves old body + new meta: refused."""
    cfg = ("--config", quantized.config)
    out = tmp_path / "calib.jsonl"
    assert run_cli("calib", *cfg, "--n", "4", "--out", out).exit_code == 0
    old_body = out.read_bytes()
    assert run_cli("calib", *cfg, "--n", "6", "--out", out, "--force").exit_code == 0
    out.write_bytes(old_body)
    one_line_error(run_cli("quantize", "--bits", "4", *cfg, "--calib", out, "--out", tmp_path / "q"),
                   "does not match", "--force")
    assert not (tmp_path / "q").exists()


def test_sigkill_during_quantize_then_rerun_succeeds(interrupted, quantized, monkeypatch):
    base, outcomes, _, small_calib = interrupted
    monkeypatch.chdir(base)  # GPTQModel writes its logs/ into the working folder
    code, log = outcomes["gptq-kill"]
    assert code == -signal.SIGKILL, log[-3000:]
    folder = base / "gptq-kill"
    assert not (folder / "int4").exists()
    stale = leftovers(folder)
    assert stale and all(p.is_dir() for p in stale)
    # The temp folder is invisible to the names compare knows and to load.
    listing = run_cli("compare", "int4", "--config", quantized.config, env={"FRAUDQ_WORK_DIR": str(folder)})
    assert "known names: fp16;" in one_line_error(listing, "no checkpoint")
    one_line_error(run_cli("load", folder / "int4", "--config", quantized.config), "does not exist")
    rerun = run_cli("quantize", "--bits", "4", "--config", quantized.config, "--calib", small_calib,
                    "--out", folder / "int4")
    assert rerun.exit_code == 0, rerun.output
    assert not leftovers(folder), "the rerun removes the dead run's temp folder"
    assert json.loads((folder / "int4" / "quant_report.json").read_text())["bits"] == 4


def test_sigkill_during_save_keeps_previous_output(interrupted, quantized):
    base, outcomes, before, _ = interrupted
    code, log = outcomes["save-kill"]
    assert code == -signal.SIGKILL, log[-3000:]
    folder = base / "force"
    assert tree_digest(folder / "int8") == before["force"]
    stale = leftovers(folder)
    assert stale and any((p / "model.safetensors").is_file() for p in stale), \
        "the temp folder held a loadable checkpoint when the run died"
    # The next run (here refused: no --force) clears the dead run's temp folder and keeps the output.
    one_line_error(run_cli("quantize", "--bits", "8", "--config", quantized.config, "--out", folder / "int8"),
                   "already exists")
    assert not leftovers(folder) and tree_digest(folder / "int8") == before["force"]


def test_sigkill_between_renames_restores_previous_output(interrupted, quantized):
    base, outcomes, before, _ = interrupted
    code, log = outcomes["swap-kill"]
    assert code == -signal.SIGKILL, log[-3000:]
    folder = base / "swap"
    assert not (folder / "int8").exists()  # missing for now ...
    one_line_error(run_cli("quantize", "--bits", "8", "--config", quantized.config, "--out", folder / "int8"),
                   "already exists")
    assert tree_digest(folder / "int8") == before["swap"]  # ... and the next run puts the previous output back
    assert not leftovers(folder)


@pytest.mark.parametrize("name, code, word", [("calib-int", 130, "interrupted"), ("calib-term", 143, "SIGTERM"),
                                              ("calib-hup", 129, "SIGHUP")])
def test_signals_exit_with_their_code_and_remove_temp_files(interrupted, name, code, word):
    """A real SIGINT, SIGTERM or SIGHUP, delivered with the calibration body written and fsynced but not yet
    renamed: one line, exit 128 + the signal, no calibration file and no temporary file left."""
    base, outcomes, _, _ = interrupted
    got, log = outcomes[name]
    assert got == code, log[-3000:]
    lines = [line for line in log.splitlines() if line.startswith("fraudq:")]
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in log, log[-3000:]
    assert not (base / name / "calib.jsonl").exists()
    assert not leftovers(base / name)


def test_ctrl_c_during_quantize_save_removes_temp_folder(interrupted, quantized, tmp_path, monkeypatch):
    """Ctrl-C with the checkpoint saved in the temp folder but the report not yet written."""
    import fraudq.quant.quantize

    _, _, _, small_calib = interrupted

    def interrupt(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(fraudq.quant.quantize, "dir_size", interrupt)
    monkeypatch.chdir(tmp_path)  # GPTQModel writes its logs/ into the working folder
    result = run_cli("quantize", "--bits", "4", "--config", quantized.config, "--calib", small_calib,
                     "--out", tmp_path / "q" / "int4")
    assert result.exit_code == 130 and "fraudq: interrupted" in result.stderr, result.output
    assert not (tmp_path / "q").exists()  # made for this run only, so removed with its temp folder


def eval_directly(project, data: Path, out: Path, batch_size: str, wrap_scorer, log=None) -> dict:
    """evaluate_model itself, with a stand-in around its Scorer (the seam for injected failures)."""
    from fraudq.config import build_config
    from fraudq.eval.evaluate import evaluate_model

    cfg = build_config(project.config, overrides={"eval_batch_size": batch_size})
    return evaluate_model(cfg, str(project.model), str(data), out, log=log or (lambda *_: None),
                          wrap_scorer=wrap_scorer)


def test_ctrl_c_in_eval_writes_no_results(project, tmp_path):
    calls = []

    def interrupted(scorer):
        def run(prompt_ids):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return scorer(prompt_ids)
        return run

    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 8))
    with pytest.raises(KeyboardInterrupt):
        eval_directly(project, data, tmp_path / "out" / "r.json", "2", interrupted)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_renaming_removes_temp_files(project, tmp_path, monkeypatch):
    """KeyboardInterrupt with the temp file written and fsynced, just before its rename."""
    import fraudq.atomic

    def interrupt(mode):
        raise KeyboardInterrupt

    monkeypatch.setattr(fraudq.atomic, "_umask_mode", interrupt)
    out = tmp_path / "c.jsonl"
    result = run_cli("calib", "--config", project.config, "--n", "4", "--out", out)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_halves_batch_with_identical_results(project, tmp_path):
    import torch

    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 16))
    common = ("eval", "--config", project.config, "--model", project.model, "--data", data)
    small = run_cli(*common, "--batch-size", "2", "--out", tmp_path / "small.json")
    assert small.exit_code == 0, small.output

    sizes, lines = [], []

    def oom_above_two(scorer):
        def run(prompt_ids):
            sizes.append(len(prompt_ids))
            if len(prompt_ids) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return scorer(prompt_ids)
        return run

    eval_directly(project, data, tmp_path / "big.json", "8", oom_above_two, log=lines.append)
    assert "out of memory on a batch of 8 rows; retrying as 4 + 4" in lines
    assert "out of memory on a batch of 4 rows; retrying as 2 + 2" in lines
    assert sizes.count(8) == 2 and sizes.count(4) == 4 and sizes.count(2) == 8
    assert (tmp_path / "big.predictions.jsonl").read_bytes() == (tmp_path / "small.predictions.jsonl").read_bytes()
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("small.json", "big.json"))
    for key in ("confusion", "precision", "recall", "f1", "accuracy", "auc", "rows"):
        assert a[key] == b[key], key


def test_out_of_memory_on_one_row_is_reported(project, tmp_path):
    import torch

    def always_oom(scorer):
        def run(prompt_ids):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return run

    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    with pytest.raises(torch.OutOfMemoryError):
        eval_directly(project, data, tmp_path / "r.json", "2", always_oom)
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- remote code and pickles


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_remote_code_needs_flag(project, tmp_path, where):
    model = copy_model(project, tmp_path)
    config = json.loads((model / where).read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoTokenizer": ["tok_evil.Tok", None]}
    (model / where).write_text(json.dumps(config))
    (model / "modeling_evil.py").write_text("raise SystemExit('custom code ran')\n")
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    cfg = ("--config", project.config)
    for args in (["load", model], ["calib", "--model", model, "--data", data, "--out", tmp_path / "c.jsonl"],
                 ["eval", "--model", model, "--data", data, "--out", tmp_path / "r.json"],
                 ["quantize", "--bits", "4", "--model", model, "--out", tmp_path / "q"]):
        one_line_error(run_cli(*args, *cfg), "custom code", "--trust-remote-code", where)
    # compare has no --trust-remote-code, so its advice does not name it
    line = one_line_error(run_cli("compare", model, "--data", data, "--out", tmp_path / "cmp", *cfg),
                          "custom code", where, "never runs checkpoint code")
    assert "--trust-remote-code" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "m"]


@pytest.mark.parametrize("source", ["config-file", "environment"])
@pytest.mark.parametrize("key", ["trust_remote_code", "allow_pickle"])
def test_code_running_settings_are_flag_only(project, tmp_path, source, key):
    """A shared config file or an exported variable never turns on checkpoint code: the marker stays unwritten."""
    model = copy_model(project, tmp_path)
    marker = tmp_path / "marker"
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    env = None
    args = ["load", model]
    if source == "config-file":
        shared = tmp_path / "shared.toml"
        shared.write_text(f"[trust]\n{key} = true\n")
        args += ["--config", shared]
    else:
        env = {"FRAUDQ_" + key.upper(): "1"}
    flag = "--" + key.replace("_", "-")
    one_line_error(run_cli(*args, env=env), key, flag, "only with")
    assert not marker.exists()


def test_trust_remote_code_is_off_by_default_everywhere():
    from fraudq.config import Config

    assert Config().trust_remote_code is False and Config().allow_pickle is False
    src = Path(__file__).resolve().parents[2] / "src" / "fraudq"
    for file in src.glob("*.py"):
        text = file.read_text(encoding="utf-8")
        assert "trust_remote_code=True" not in text, file
        assert "torch.load(" not in text and "pickle.load" not in text, file


def test_pickle_weights_need_allow_pickle(project, tmp_path):
    import torch
    from safetensors.torch import load_file

    model = copy_model(project, tmp_path)
    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    one_line_error(run_cli("load", model, "--config", project.config), "pickle", "--allow-pickle")
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    one_line_error(run_cli("eval", "--model", model, "--data", data, "--config", project.config,
                           "--out", tmp_path / "r.json"), "--allow-pickle")
    allowed = run_cli("load", model, "--allow-pickle", "--json", "--config", project.config)
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["layers"] == 2


# ---------------------------------------------------------------- no text, umask, no network


def _is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:4]
    return path.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt") or head[:1] == b"\x80" or head == b"PK\x03\x04"


def _assert_no_text(folder: Path, sentences: list[str]) -> int:
    needles = []
    for sentence in sentences:
        needles += [sentence.encode(), json.dumps(sentence)[1:-1].encode()]
    files = [p for p in folder.rglob("*") if p.is_file()]
    for file in files:
        blob = file.read_bytes()
        for needle in needles:
            assert needle not in blob, f"{file} holds dialogue text {needle[:40]!r}"
    return len(files)


def test_whole_cli_offline_under_umask_writes_no_text(quantized, tmp_path, monkeypatch):
    """calib -> quantize -> eval -> compare -> load with the network cut and umask 027.

    Every file written respects the umask, none is a pickle, and none holds a calibration or test sentence.
    """
    attempts = []
    real_connect = socket.socket.connect

    def no_network(self, address, *args):
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address, *args)
        attempts.append(address)
        raise OSError("network disabled by the test")

    def no_dns(*args, **kwargs):
        attempts.append(args[:2])
        raise socket.gaierror("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: no_dns(*a))
    monkeypatch.chdir(tmp_path)  # GPTQModel writes its own logs/ into the working folder

    train = rows_of(quantized.train, 8)
    train[3]["input"] += "\n" + CANARY_CALIB
    test = rows_of(quantized.test, 8)
    test[5]["input"] += "\n" + CANARY_TEST
    calib_sentence = max(train[0]["input"].split("\n"), key=len)
    test_sentence = max(test[0]["input"].split("\n"), key=len)
    calib_data = write_rows(tmp_path / "calib-data.jsonl", train)
    test_data = write_rows(tmp_path / "test-data.jsonl", test)
    work = tmp_path / "w"
    cfg = ("--config", quantized.config)
    old_umask = os.umask(0o027)
    try:
        steps = [
            ("calib", *cfg, "--data", calib_data, "--n", "0", "--out", work / "calib.jsonl"),
            ("quantize", "--bits", "4", "--group-size", "64", *cfg, "--calib", work / "calib.jsonl",
             "--out", work / "int4"),
            ("eval", *cfg, "--model", work / "int4", "--data", test_data, "--out", work / "eval" / "int4.json"),
            ("eval", *cfg, "--model", quantized.model, "--data", test_data, "--out", work / "eval" / "fp16.json"),
            ("compare", work / "eval" / "fp16.json", work / "eval" / "int4.json", *cfg, "--data", test_data,
             "--examples", "3", "--plot", work / "plots", "--out", work / "compare"),
            ("load", work / "int4", "--json", *cfg),
        ]
        for step in steps:
            result = run_cli(*step)
            assert result.exit_code == 0, (step[0], result.output)
    finally:
        os.umask(old_umask)
    assert attempts == [], f"fraudq tried to reach the network: {attempts}"

    report = json.loads((work / "int4" / "quant_report.json").read_text())
    assert report["calibration"]["rows"] == 8 and len(report["calibration"]["data_sha256"]) == 64
    written = [work, tmp_path / "logs"] if (tmp_path / "logs").exists() else [work]
    for folder in written:
        for path in [folder, *folder.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode & 0o027 == 0, f"{path} is {oct(mode)} under umask 027"
            if path.is_file():
                assert mode == 0o640, f"{path} is {oct(mode)}, expected 0o640 under umask 027"
        assert not [p for p in folder.rglob("*") if p.is_file() and _is_pickle(p)]
        # Only counts and hashes: neither the canaries nor real dialogue lines appear in any file.
        count = _assert_no_text(folder, [CANARY_CALIB, CANARY_TEST, "CANARY-", calib_sentence, test_sentence])
        assert count > 10 or folder != work
    # The suite's own checkpoints (64 calibration rows) hold no dialogue either.
    sentences = [max(r["input"].split("\n"), key=len) for r in rows_of(quantized.train, 40)]
    for name in ("int8", "int4"):
        assert _assert_no_text(quantized.work / name, sentences) > 5
        assert not [p for p in (quantized.work / name).rglob("*") if _is_pickle(p)]
    meta = (quantized.work / "calib.jsonl.meta.json").read_bytes()
    assert not [s for s in sentences if s.encode() in meta or json.dumps(s)[1:-1].encode() in meta]


# ---------------------------------------------------------------- fuzz: 200 corrupted files

WRONG_VALUES = [None, 0, 1, 2, -1, 3.5, "", "x", "true", "否", [], [1, "a"], {}, {"a": 1}, True, False,
                "\ud800", 10 ** 30, float("inf")]
KEYS = ["input", "label", "instruction", "id", "messages"]
ROLES = ["user", "assistant", "system", "bot", "", None, 3, ["user"]]


def _corrupt(rng: random.Random, rows: list[dict]) -> bytes:
    """A 10-row file, labelled or chat, with 1-3 structural corruptions and sometimes random bytes."""
    if rng.random() < 0.3:
        rows = [{"messages": [{"role": "user", "content": r["input"]},
                              {"role": "assistant", "content": json.dumps({"is_fraud": r["label"]})}]} for r in rows]
    lines = [json.dumps(r, ensure_ascii=rng.random() < 0.3) for r in rows]
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["truncate", "type", "drop", "label", "role", "garbage", "blank", "dup", "cut-file"])
        if not lines:
            lines.append(rng.choice(["", "{}", "[]"]))
            continue
        i = rng.randrange(len(lines))
        if op == "truncate":
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
            continue
        if op == "garbage":
            lines.insert(i, rng.choice(["[1, 2]", "null", "42", '"text"', "{}", "{", "}", "NaN", "\x00", "[" * 3000,
                                        '{"input": "a", "label": ' + "9" * 4500 + "}"]))
            continue
        if op == "blank":
            lines.insert(i, rng.choice(["", " ", "\t", "\r"]))
            continue
        if op == "dup":
            lines.insert(i, lines[rng.randrange(len(lines))])
            continue
        if op == "cut-file":
            lines = lines[: rng.randrange(len(lines) + 1)]
            continue
        try:
            obj = json.loads(lines[i])
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if op == "label":
            obj["label"] = rng.choice([0, 1, 2, "yes", "TRUE", " false ", None, 1.0, [], "0", True])
        elif op == "role" and isinstance(obj.get("messages"), list) and obj["messages"]:
            message = rng.choice(obj["messages"])
            if isinstance(message, dict):
                message[rng.choice(["role", "content"])] = rng.choice(ROLES + WRONG_VALUES)
        elif op == "drop":
            obj.pop(rng.choice(KEYS + list(obj)), None)
        else:
            obj[rng.choice(KEYS + list(obj))] = rng.choice(WRONG_VALUES)
        lines[i] = json.dumps(obj, ensure_ascii=rng.random() < 0.7)
    blob = bytearray(("\r\n" if rng.random() < 0.1 else "\n").join(lines).encode("utf-8", "surrogatepass"))
    if rng.random() < 0.2:  # random bytes, overwritten or inserted: any byte, or printable ASCII and controls
        top = rng.choice([256, 128])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(blob) + 1)
            chunk = bytes(rng.randrange(top) for _ in range(rng.randint(1, 6)))
            if rng.random() < 0.5 and at < len(blob):
                blob[at: at + len(chunk)] = chunk
            else:
                blob[at:at] = chunk
    if rng.random() < 0.05:
        blob[:0] = b"\xef\xbb\xbf"
    return bytes(blob)


def test_fuzzed_jsonl_ends_in_exit_0_or_2(project, tmp_path):
    """200 seeded corruptions of a 10-row file, each through calib and eval: exit 0 or 2, never a traceback."""
    rows = rows_of(project.test, 10)
    rng = random.Random(20240606)
    outcomes = {0: 0, 2: 0}
    for index in range(200):
        data = tmp_path / f"fuzz{index}.jsonl"
        data.write_bytes(_corrupt(rng, rows))
        skip = ("--skip-invalid",) if rng.random() < 0.4 else ()
        for command in ("calib", "eval"):
            out = tmp_path / "out" / f"{command}{index}.json"
            extra = ("--limit", "2") if command == "eval" else ("--n", "3")
            result = run_cli(command, "--config", project.config, "--model", project.model, "--data", data,
                             "--out", out, *extra, *skip)
            context = (index, command, skip, result.output[-500:])
            assert result.exit_code in (0, 2), context
            assert "Traceback" not in result.output, context
            if result.exit_code == 2:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("fraudq: error:"), context
                assert not out.exists(), context
            outcomes[result.exit_code] += 1
    assert outcomes[0] > 20 and outcomes[2] > 100, outcomes  # both paths really ran
