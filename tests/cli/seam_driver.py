"""The real CLI in a process of its own, with one seam for tests/cli/test_outputs.py.

Usage: python seam_driver.py SEAM ARG FRAUDQ-ARGS...
  pause-holding FOLDER  once the run holds its output's lock: writes FOLDER/held, waits for FOLDER/go
  gptq-raises MESSAGE   fraudq's engine fails in its first column solve with RuntimeError(MESSAGE)
"""
import os
import sys
import time
from pathlib import Path

import fraudq.atomic
import fraudq.cli

if __name__ != "__main__":
    raise ImportError("seam_driver runs as a program: python seam_driver.py SEAM ARG FRAUDQ-ARGS...")
seam, arg, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if seam == "pause-holding":
    real_lock = fraudq.atomic._lock

    def lock(path, target):
        fd = real_lock(path, target)
        (Path(arg) / "held").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (Path(arg) / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return fd

    fraudq.atomic._lock = lock
elif seam == "gptq-raises":
    from fraudq.quant import engine

    def solve(*args, **kwargs):
        raise RuntimeError(arg)

    engine.gptq_solve = solve
else:
    raise SystemExit(f"unknown seam {seam}")
sys.argv = ["fraudq", *argv]
fraudq.cli.main()
