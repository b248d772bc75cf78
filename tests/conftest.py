"""Shared fixtures: one tiny Qwen2 classifier trained on generated dialogues, and its quantized copies.

Everything is built once per test session under a temporary folder, so the suite runs offline.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fraudq.cli import app
from fraudq.config import toml_value
from fraudq.demo.synth import generate_dialogues, write_jsonl

TRAIN_ROWS = 600
TEST_ROWS = 160
CALIB_ROWS = 64


@dataclass
class Project:
    root: Path
    model: Path
    train: Path
    test: Path
    config: Path

    @property
    def work(self) -> Path:
        return self.root / "runs"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run many small ops, which a second torch thread slows down on a few shared cores. Modules that
    want it name it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args: str, env: dict | None = None):
    """Invokes the real CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def one_line_error(result, *needles) -> str:
    """Exit 2, exactly one stderr line starting 'fraudq: error:', no traceback anywhere."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fraudq: error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def write_config(path: Path, **values) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Project:
    from fraudq.demo.reference import train_reference

    root = tmp_path_factory.mktemp("fraudq")
    rows = generate_dialogues(TRAIN_ROWS + TEST_ROWS, seed=7)
    train, test = rows[:TRAIN_ROWS], rows[TRAIN_ROWS:]
    write_jsonl(root / "train.jsonl", train)
    write_jsonl(root / "test.jsonl", test)
    train_reference("tiny", train, root / "tiny", seed=0, log=lambda *_: None)
    config = write_config(root / "fraudq.toml", model=str(root / "tiny"), work_dir=str(root / "runs"),
                          calib_data=str(root / "train.jsonl"), test_data=str(root / "test.jsonl"),
                          calib_n=CALIB_ROWS, device="cpu")
    return Project(root=root, model=root / "tiny", train=root / "train.jsonl", test=root / "test.jsonl",
                   config=config)


@pytest.fixture(scope="session")
def quantized(project) -> Project:
    """calib, then quantize 8 and 4 through the CLI with nothing but the config file."""
    for args in (["calib"], ["quantize", "--bits", "8"], ["quantize", "--bits", "4"]):
        result = run_cli(*args, "--config", project.config)
        assert result.exit_code == 0, result.output
    return project
