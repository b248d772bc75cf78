"""Outputs: an --out never destroys an input or a model, one run at a time per target, everything checked
before the work, and error lines that stand on their own. docs/RELIABILITY.md maps each case to a test here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_line_error, run_cli, write_config
from helpers import copy_model, leftovers, rows_of, tree_digest, write_rows

DRIVER = Path(__file__).with_name("seam_driver.py")
HOLDER = ("import sys\nfrom fraudq.atomic import hold\n"
          "with hold(sys.argv[1], inside=sys.argv[2] == '1'):\n    print('held', flush=True)\n    sys.stdin.read()\n")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_calib(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    result = run_cli("calib", "--config", project.config, "--n", "4", "--max-len", "64", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def not_called(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} ran: the check came after the work")
    return refuse


@pytest.fixture
def no_eval(monkeypatch):
    """The checks under test come before evaluate_model: it must never run. Every module that imported it gets
    the stand-in, and each is imported first, so none keeps the stand-in once the test ends."""
    import fraudq.comparison
    import fraudq.eval.evaluate
    import fraudq.pipeline

    for module in (fraudq.eval.evaluate, fraudq.comparison, fraudq.pipeline):
        monkeypatch.setattr(module, "evaluate_model", not_called("evaluate_model"))


@pytest.fixture
def no_gptq(monkeypatch):
    from fraudq.quant import gptqmodel_api

    monkeypatch.setattr(gptqmodel_api, "load_for_quantization", not_called("the model load"))


# ---------------------------------------------------------------- an output never destroys an input


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", ["data", "config", "model-config", "inside-model"])
def test_eval_out_that_is_an_input_is_refused(project, tmp_path, no_eval, kind, force):
    model = copy_model(project, tmp_path)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    config = write_config(tmp_path / "fraudq.toml", device="cpu", work_dir=str(tmp_path / "w"))
    out = {"data": data, "config": config, "model-config": model / "config.json",
           "inside-model": model / "r.json"}[kind]
    before = {p: digest(p) for p in (data, config)} | {model: tree_digest(model)}
    args = ["eval", "--config", config, "--model", model, "--data", data, "--out", out]
    one_line_error(run_cli(*args, *(["--force"] if force else [])), str(out))
    assert before == {p: digest(p) for p in (data, config)} | {model: tree_digest(model)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "fraudq.toml", "m"]


def test_eval_out_inside_any_model_folder_is_refused(project, tmp_path, no_eval):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    other = copy_model(project, tmp_path, "other")  # a model folder this run does not read
    before = tree_digest(other)
    one_line_error(run_cli("eval", "--config", project.config, "--data", data, "--out", other / "r.json",
                           "--force"), "inside the model folder", str(other))
    assert tree_digest(other) == before


def test_eval_replaces_only_its_own_results_without_force(project, tmp_path):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    common = ("eval", "--config", project.config, "--model", project.model, "--data", data)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    one_line_error(run_cli(*common, "--out", notes), "not a fraudq results file", "--force")
    assert notes.read_text() == '{"mine": true}\n' and not (tmp_path / "notes.predictions.jsonl").exists()
    stray = tmp_path / "r.predictions.jsonl"
    stray.write_text("mine\n")
    one_line_error(run_cli(*common, "--out", tmp_path / "r.json"), "belongs to no results file", "--force")
    assert stray.read_text() == "mine\n"
    stray.unlink()
    for _ in range(2):  # an earlier results file is replaced without --force
        result = run_cli(*common, "--out", tmp_path / "r.json")
        assert result.exit_code == 0, result.output
    forced = run_cli(*common, "--out", notes, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(notes.read_text())["rows"] == 4
    assert not list(tmp_path.glob(".*fraudq-lock")) and not leftovers(tmp_path)


@pytest.mark.parametrize("command", ["eval", "calib"])
def test_file_written_beside_the_out_that_is_an_input_is_refused(project, tmp_path, no_eval, command):
    """eval writes r.predictions.jsonl beside r.json, calib c.jsonl.meta.json beside c.jsonl: neither may be the data."""
    out, data = {"eval": ("r.json", "r.predictions.jsonl"), "calib": ("c.jsonl", "c.jsonl.meta.json")}[command]
    data = write_rows(tmp_path / data, rows_of(project.test, 4))
    before = digest(data)
    one_line_error(run_cli(command, "--config", project.config, "--data", data, "--out", tmp_path / out, "--force"),
                   str(data), "which this run reads")
    assert digest(data) == before and sorted(p.name for p in tmp_path.iterdir()) == [data.name]


@pytest.mark.parametrize("kind", ["data", "config", "inside-model"])
def test_calib_out_that_is_an_input_is_refused(project, tmp_path, kind):
    model = copy_model(project, tmp_path)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.train, 4))
    config = write_config(tmp_path / "fraudq.toml", device="cpu")
    out = {"data": data, "config": config, "inside-model": model / "calib.jsonl"}[kind]
    before = {data: digest(data), config: digest(config), model: tree_digest(model)}
    one_line_error(run_cli("calib", "--config", config, "--model", model, "--data", data, "--out", out, "--force"),
                   str(out))
    assert before == {data: digest(data), config: digest(config), model: tree_digest(model)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "fraudq.toml", "m"]


@pytest.mark.parametrize("kind", ["data-file", "model-folder"])
def test_compare_out_that_is_a_file_or_a_model_is_refused(project, tmp_path, no_eval, kind):
    model = copy_model(project, tmp_path)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    out, needle = {"data-file": (data, "is a file"), "model-folder": (model, "model folder")}[kind]
    before = {data: digest(data), model: tree_digest(model)}
    one_line_error(run_cli("compare", model, "--config", project.config, "--data", data, "--out", out,
                           env={"FRAUDQ_WORK_DIR": str(tmp_path / "w")}), needle)
    assert before == {data: digest(data), model: tree_digest(model)}
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kind", ["same", "inside", "around"])
def test_quantize_never_replaces_its_own_model(project, small_calib, tmp_path, no_gptq, kind):
    model = copy_model(project, tmp_path / "models")
    out, needle = {"same": (model, "which this run reads"), "inside": (model / "int4", "inside"),
                   "around": (tmp_path / "models", "holds")}[kind]
    before = tree_digest(tmp_path)
    one_line_error(run_cli("quantize", "--bits", "4", "--config", project.config, "--model", model,
                           "--calib", small_calib, "--out", out, "--force"), str(out), needle)
    assert tree_digest(tmp_path) == before and sorted(p.name for p in tmp_path.rglob("*") if p.name[0] == ".") == []


# ---------------------------------------------------------------- one run per output


def start_holder(target: Path, inside: bool = False) -> subprocess.Popen:
    """A second process that holds `target` through fraudq.atomic.hold until its stdin closes."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), "1" if inside else "0"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def test_two_quantize_runs_on_one_out_never_both_write(project, small_calib, tmp_path):
    """The first run (4-bit) holds int4 while the second (8-bit) starts: the second is refused, naming the
    first's pid, and the output is the first run's."""
    out = tmp_path / "int4"
    args = ["quantize", "--config", str(project.config), "--calib", str(small_calib), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(DRIVER), "pause-holding", str(tmp_path), *args, "--bits", "4"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "held").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "fraudq", *args, "--bits", "8"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fraudq: error:"), second.stderr[-2000:]
        assert f"pid {first.pid}" in lines[0] and str(out) in lines[0]
    finally:
        (tmp_path / "go").write_text("")
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert json.loads((out / "quant_report.json").read_text())["bits"] == 4
    assert not list(tmp_path.glob(".*fraudq-lock")) and not leftovers(tmp_path)


@pytest.mark.parametrize("command", ["calib", "eval", "compare", "run"])
def test_every_command_refuses_an_output_another_run_holds(project, tmp_path, no_eval, command):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    work = tmp_path / "w"
    cfg = ("--config", project.config)
    target, inside, args = {
        "calib": (tmp_path / "c.jsonl", False, ["calib", *cfg, "--data", data, "--out", tmp_path / "c.jsonl"]),
        "eval": (tmp_path / "r.json", False, ["eval", *cfg, "--data", data, "--out", tmp_path / "r.json"]),
        "compare": (tmp_path / "cmp", True, ["compare", "fp16", *cfg, "--data", data, "--out", tmp_path / "cmp"]),
        "run": (work, True, ["run", *cfg, "--test-data", data]),
    }[command]
    holder = start_holder(target, inside)
    try:
        one_line_error(run_cli(*args, env={"FRAUDQ_WORK_DIR": str(work)}), str(target), f"pid {holder.pid}")
    finally:
        release(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_lock_of_a_killed_run_blocks_no_one(project, tmp_path):
    out = tmp_path / "c.jsonl"
    holder = start_holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / ".c.jsonl.fraudq-lock").exists()  # left by the dead run, locked by no one
    result = run_cli("calib", "--config", project.config, "--n", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "c.jsonl.meta.json"]


# ---------------------------------------------------------------- the index's shards are the fingerprint


def shard(model: Path) -> list[Path]:
    """The checkpoint as two safetensors shards named by an index, plus a stray file the index does not name."""
    from safetensors.torch import load_file, save_file

    state = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(state)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in parts.items():
        save_file({k: state[k] for k in keys}, model / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in parts.items() for k in keys}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    save_file({"unused": state[names[0]].clone()}, model / "stray.safetensors", metadata={"format": "pt"})
    return [model / file for file in parts]


def test_changed_shard_or_chat_template_is_evaluated_again(project, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    model = copy_model(project, tmp_path)
    shards = shard(model)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    env = {"FRAUDQ_WORK_DIR": str(tmp_path / "w")}

    def compare():
        result = run_cli("compare", model, "--config", project.config, "--data", data, "--out", tmp_path / "cmp",
                         env=env)
        assert result.exit_code == 0, result.output
        return "evaluating m" in result.stdout

    assert compare() and not compare()
    (model / "stray.safetensors").write_bytes(b"not read by the loader")
    assert not compare(), "a file the loader never opens must not make the result stale"
    state = load_file(shards[1])
    name = sorted(state)[0]
    state[name] = state[name] + torch.ones_like(state[name])
    save_file(state, shards[1], metadata={"format": "pt"})
    assert compare(), "a changed shard must make the stored result stale"
    assert not compare()
    template = model / "chat_template.jinja"
    template.write_text(template.read_text(encoding="utf-8").replace("<|im_start|>", "<|im_start|> "), encoding="utf-8")
    assert compare(), "a changed chat template changes every prompt: the stored result must be stale"


# ---------------------------------------------------------------- checked before the work


def test_eval_out_that_is_a_folder_is_refused_before_loading(project, tmp_path, no_eval):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    (tmp_path / "r.json").mkdir()
    for flags in ([], ["--force"]):
        one_line_error(run_cli("eval", "--config", project.config, "--data", data, "--out", tmp_path / "r.json",
                               *flags), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "r.json"]


def test_failing_results_write_leaves_no_predictions(project, tmp_path, monkeypatch):
    """A full disk when the results file is written, after the predictions were: neither file is left."""
    import fraudq.eval.results

    def disk_full(target, obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fraudq.eval.results, "atomic_write_json", disk_full)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    out = tmp_path / "out" / "r.json"
    result = run_cli("eval", "--config", project.config, "--data", data, "--out", out)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == \
        "fraudq: failed: OSError: [Errno 28] No space left on device (set FRAUDQ_DEBUG=1 for details)"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d.jsonl"]  # out/ was made for this run only


def calib_with_ids(small_calib: Path, folder: Path, token_id: int) -> Path:
    """A hand-edited calibration file whose meta still matches it."""
    out = folder / "calib.jsonl"
    rows = [json.loads(line) for line in small_calib.read_text().splitlines()]
    rows[1]["input_ids"][3] = token_id
    body = "".join(json.dumps(r) + "\n" for r in rows)
    out.write_text(body)
    meta = json.loads(small_calib.with_name("calib.jsonl.meta.json").read_text())
    meta["calib_sha256"] = hashlib.sha256(body.encode()).hexdigest()
    (folder / "calib.jsonl.meta.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("offset", [0, 10 ** 30])
def test_calibration_ids_outside_the_vocabulary_are_refused_before_loading(project, small_calib, tmp_path, no_gptq,
                                                                           offset):
    vocab = json.loads((project.model / "config.json").read_text())["vocab_size"]
    calib = calib_with_ids(small_calib, tmp_path, vocab + offset)
    one_line_error(run_cli("quantize", "--bits", "4", "--config", project.config, "--calib", calib,
                           "--out", tmp_path / "q"), "calib.jsonl:2", f"token id {vocab + offset}",
                   f"vocabulary of {vocab}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.jsonl", "calib.jsonl.meta.json"]


@contextlib.contextmanager
def read_only(folder: Path):
    """A folder no one may write into, root included (the immutable attribute), else by its mode."""
    folder.mkdir()
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr: cannot make a read-only folder")
    if not immutable:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_read_only_target_is_refused_before_the_work(project, small_calib, tmp_path, no_eval, no_gptq):
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    cfg = ("--config", project.config)
    with read_only(tmp_path / "ro") as ro:
        for args in (["eval", "--data", data, "--out", ro / "r.json"],
                     ["eval", "--data", data, "--out", ro / "e" / "r.json"],
                     ["calib", "--data", data, "--out", ro / "c.jsonl"],
                     ["quantize", "--bits", "4", "--calib", small_calib, "--out", ro / "int4"]):
            one_line_error(run_cli(*args, *cfg), str(ro))
        assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", ["calib", "eval", "quantize"])
def test_empty_out_is_refused(project, small_calib, tmp_path, monkeypatch, no_eval, no_gptq, command):
    monkeypatch.chdir(tmp_path)
    args = {"calib": ["calib"], "eval": ["eval"], "quantize": ["quantize", "--bits", "4", "--calib", small_calib]}
    one_line_error(run_cli(*args[command], "--config", project.config, "--force", "--out", ""),
                   "names no file or folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["calib", "eval", "quantize"])
def test_name_too_long_for_the_filesystem_is_refused_before_the_work(project, small_calib, tmp_path, no_eval,
                                                                      no_gptq, command):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = "r" * (limit - 12)  # fits as it is, not with the temporary prefix (or the predictions' suffix)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 4))
    args = {"calib": ["calib", "--data", data], "eval": ["eval", "--data", data],
            "quantize": ["quantize", "--bits", "4", "--calib", small_calib]}
    one_line_error(run_cli(*args[command], "--config", project.config, "--out", tmp_path / name), "too long")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


# ---------------------------------------------------------------- error lines stand alone


def test_failure_during_gptq_is_a_line_of_its_own(project, small_calib, tmp_path, monkeypatch):
    from fraudq.quant import engine

    def solve(*args, **kwargs):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(engine, "gptq_solve", solve)
    monkeypatch.chdir(tmp_path)  # GPTQModel writes its logs/ into the working folder
    result = run_cli("quantize", "--bits", "4", "--config", project.config, "--calib", small_calib,
                     "--out", tmp_path / "q")
    assert result.exit_code == 1
    failed = "fraudq: failed: RuntimeError: solver exploded (set FRAUDQ_DEBUG=1 for details)"
    assert result.stderr.splitlines()[-1] == failed
    assert "GPTQ layers" not in result.stderr
    assert not (tmp_path / "q").exists() and not leftovers(tmp_path)


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows: a carriage return goes back to the line's start, ESC[K erases to its end."""
    lines = []
    for text in raw.replace("\r\n", "\n").split("\n"):
        line, col = [], 0
        for part in text.replace("\x1b[K", "\x00").split("\r"):
            col = 0
            for char in part:
                if char == "\x00":
                    del line[col:]
                    continue
                if col < len(line):
                    line[col] = char
                else:
                    line.append(char)
                col += 1
        lines.append("".join(line).rstrip())
    return [line for line in lines if line]


def test_failure_during_gptq_on_a_terminal_clears_the_bar(project, small_calib, tmp_path):
    """On a real terminal the bar is drawn, then cleared before the error, which is the line the user sees."""
    controller, terminal = pty.openpty()
    args = [sys.executable, str(DRIVER), "gptq-raises", "solver exploded", "quantize", "--bits", "4",
            "--config", str(project.config), "--calib", str(small_calib), "--out", str(tmp_path / "q")]
    proc = subprocess.Popen(args, cwd=tmp_path, stdin=terminal, stdout=terminal, stderr=terminal,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(terminal)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the child closed the terminal
        while chunk := os.read(controller, 65536):
            chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=300) == 1
    shown = screen_lines(b"".join(chunks).decode("utf-8", "replace"))
    failed = [line for line in shown if "fraudq: failed" in line]
    assert failed == ["fraudq: failed: RuntimeError: solver exploded (set FRAUDQ_DEBUG=1 for details)"], shown[-5:]
    assert not any("GPTQ layers" in line for line in shown[shown.index(failed[0]):])


# ---------------------------------------------------------------- advice names the command's own flags


def pickle_only(project, tmp_path) -> Path:
    import torch
    from safetensors.torch import load_file

    model = copy_model(project, tmp_path)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return model


def test_pickle_advice_names_only_flags_the_command_has(project, small_calib, tmp_path):
    model = pickle_only(project, tmp_path)
    data = write_rows(tmp_path / "d.jsonl", rows_of(project.test, 2))
    cfg = ("--config", project.config, "--model", model)
    without = {"calib": ["calib", *cfg, "--data", data, "--out", tmp_path / "c.jsonl"],
               "quantize": ["quantize", "--bits", "4", *cfg, "--calib", small_calib, "--out", tmp_path / "q"],
               "compare": ["compare", model, "--config", project.config, "--data", data, "--out", tmp_path / "cmp"]}
    for args in without.values():
        line = one_line_error(run_cli(*args), "pickle", "convert them to safetensors")
        assert "--allow-pickle" not in line, line
    with_flag = {"eval": ["eval", *cfg, "--data", data, "--out", tmp_path / "r.json"], "load": ["load", model]}
    for args in with_flag.values():
        one_line_error(run_cli(*args), "pickle", "--allow-pickle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "m"]
