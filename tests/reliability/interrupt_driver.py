"""The interrupt scenarios of test_reliability: the real CLI, stopped by a real signal at a set point.

torch and transformers are imported once, before any thread exists, and each scenario is a forked child,
so all of them cost one set of imports. Usage: python interrupt_driver.py RUNS.json CODES.json
"""
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import torch  # noqa: F401
import transformers  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

import fraudq.atomic
import fraudq.cli
import fraudq.quant.quantize

assert threading.active_count() == 1, threading.enumerate()


def fire(sig):
    os.kill(os.getpid(), sig)
    if threading.current_thread() is threading.main_thread():
        time.sleep(10)  # SIGINT's KeyboardInterrupt is raised here; SIGKILL never gets this far


def install(point, sig, argv):
    real_replace = os.replace
    if point == "calib-rename":  # the calibration body is written and fsynced, not yet renamed
        def replace(src, dst):
            if Path(dst).name == "calib.jsonl":
                fire(sig)
            return real_replace(src, dst)

        os.replace = replace
    elif point == "gptq":  # in the middle of GPTQ: the third solve (gate+up of layer 0) of fraudq's engine
        from fraudq.quant import engine as gptq_fast

        real_solve, calls = gptq_fast.gptq_solve, []

        def solve(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                fire(sig)
            return real_solve(*args, **kwargs)

        gptq_fast.gptq_solve = solve
    elif point == "save":  # weights, config and tokenizer saved in the temp folder; report not yet written
        def dir_size(path):
            fire(sig)

        fraudq.quant.quantize.dir_size = dir_size
    elif point == "between-renames":  # old output moved aside, new one not yet renamed in
        target = Path(argv[0])

        def replace(src, dst):
            if Path(src).name.startswith(".fraudq-tmp-") and Path(dst) == target:
                fire(sig)
            return real_replace(src, dst)

        os.replace = replace


def child(point, signame, argv, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # A process started from a background job inherits SIGINT as ignored; a user's Ctrl-C reaches a foreground
    # one, which has Python's default handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        install(point, getattr(signal, signame), argv)
        if point == "between-renames":  # atomic_dir alone, replacing a complete folder
            with fraudq.atomic.atomic_dir(argv[0], force=True) as tmp:
                (tmp / "new.txt").write_text("new")
        else:
            sys.argv = ["fraudq", *argv]
            fraudq.cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ != "__main__":
    raise ImportError("interrupt_driver runs as a program: python interrupt_driver.py RUNS.json CODES.json")
runs = json.loads(Path(sys.argv[1]).read_text())
sys.stdout.flush()
sys.stderr.flush()
pids = {}
for name, spec in runs.items():
    pid = os.fork()
    if pid == 0:
        child(*spec)
    pids[name] = pid
codes = {name: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for name, pid in pids.items()}
Path(sys.argv[2]).write_text(json.dumps(codes))
