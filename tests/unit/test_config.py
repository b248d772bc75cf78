"""One config module: defaults, the TOML file, FRAUDQ_* variables and flags, in that order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fraudq.config import Config, build_config, read_toml
from fraudq.errors import BadInput

from conftest import run_cli, write_config

ROOT = Path(__file__).resolve().parents[2]


def test_default_toml_matches_the_dataclass():
    assert read_toml(ROOT / "configs" / "default.toml") == dataclasses.asdict(Config())


def test_precedence_flag_over_env_over_file(tmp_path):
    path = write_config(tmp_path / "c.toml", group_size=64, damp=0.02, seed=5)
    cfg = build_config(path, overrides={"group_size": 32}, environ={"FRAUDQ_GROUP_SIZE": "16", "FRAUDQ_DAMP": "0.03"})
    assert cfg.group_size == 32  # flag beats everything
    assert cfg.damp == 0.03  # environment beats the file
    assert cfg.seed == 5  # the file beats the default
    assert cfg.max_len == 1024  # default


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(BadInput, match="FRAUDQ_DESC_ACT"):
        build_config(environ={"FRAUDQ_DESC_ACT": "maybe"})
    with pytest.raises(BadInput, match="unknown setting 'colour'"):
        build_config(write_config(tmp_path / "c.toml", colour="red"), environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("group_size = = 3")
    result = run_cli("config", "--config", bad)
    assert result.exit_code == 2 and "not valid TOML" in result.stderr


def test_config_command_prints_effective_values(tmp_path):
    path = write_config(tmp_path / "c.toml", work_dir="elsewhere")
    result = run_cli("config", "--config", path, "--json", env={"FRAUDQ_DAMP": "0.05"})
    assert result.exit_code == 0
    assert '"work_dir": "elsewhere"' in result.stdout and '"damp": 0.05' in result.stdout


def test_default_layout():
    cfg = Config(work_dir="w")
    assert cfg.calib_path == Path("w/calib.jsonl")
    assert cfg.quant_dir(8) == Path("w/int8")
    assert cfg.eval_results_path("int4") == Path("w/eval/int4.json")
