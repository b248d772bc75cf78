"""Each command prints its own lines; library chatter goes to <work_dir>/logs/<command>.log unless -v.

Run as real processes: in-process, libraries imported by earlier tests would have bound their loggers elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
CHATTER = ("INFO", "WARN", "Failed to load", "_pytree", "GPT-QModel", "Kernel:", "Loader:")


def fraudq(*args):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "fraudq", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


def chatter(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if any(c in line for c in CHATTER)]


def test_commands_print_no_library_output_unless_verbose(quantized, tmp_path):
    cfg = ("--config", quantized.config)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(quantized.test.read_text().splitlines(keepends=True)[:12]))
    q4 = tmp_path / "q4"
    quantize = fraudq("quantize", "--bits", "4", *cfg, "--out", q4)
    assert quantize.returncode == 0, quantize.stderr
    assert chatter(quantize) == [] and "quantized" in quantize.stdout
    assert "INFO" in (quantized.work / "logs" / "quantize.log").read_text(encoding="utf-8")

    compare = fraudq("compare", q4, "fp16", *cfg, "--data", data, "--out", tmp_path / "cmp")
    assert compare.returncode == 0, compare.stderr
    assert chatter(compare) == [] and "verdict:" in compare.stdout

    ev = fraudq("eval", "--model", q4, "--data", data, *cfg, "--out", tmp_path / "e.json")
    assert ev.returncode == 0, ev.stderr
    assert chatter(ev) == [] and "12 rows" in ev.stdout
    loud = fraudq("eval", "--model", q4, "--data", data, *cfg, "--out", tmp_path / "e.json", "-v")
    assert loud.returncode == 0 and chatter(loud), loud.stdout + loud.stderr

    load = fraudq("load", q4, "--json", *cfg)
    assert load.returncode == 0 and json.loads(load.stdout)["quantization"]["bits"] == 4
    assert chatter(load) == []

    bad = fraudq("eval", "--model", tmp_path / "missing", "--data", data, *cfg)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("fraudq: error:")
