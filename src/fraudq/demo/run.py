"""`fraudq demo`: the whole job on a fresh machine, on CPU, with nothing downloaded.

Generates labelled dialogues (train/test/calib), trains the `tiny` reference classifier, then hands a
config to `fraudq run` (calib -> quantize 8 and 4 -> eval -> compare). Everything lands under --out.
Running it again on the same folder resumes: each step whose inputs are unchanged (by content hash) is
skipped, so a finished demo reprints its table in seconds. A non-empty folder that holds no earlier
demo is refused unless --force; --force also redoes every step.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path

from fraudq.atomic import atomic_write_json, atomic_write_text
from fraudq.config import build_config, toml_value
from fraudq.data import file_sha256
from fraudq.errors import BadInput
from fraudq.checkpoint import fingerprint, inspect_model
from fraudq.console import shown, stage_log
from fraudq.pipeline import run_pipeline
from fraudq.workspace import read_stamp, write_stamp

MARKER = "demo.json"
TRAIN_ROWS, TEST_ROWS, CALIB_ROWS = 400, 200, 64
EPOCHS = 2.5  # 63 steps of 16 rows: learns the generated task well, yet not perfectly (~97% on test)
SEED = 7
PRESET = "tiny"


def check_out_dir(out: Path, force: bool) -> bool:
    """True when `out` holds an earlier demo to resume."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; name a folder")
    earlier = (out / MARKER).is_file()
    if out.is_dir() and any(out.iterdir()) and not earlier and not force:
        raise BadInput(f"{out} is not empty and holds no earlier demo; pick another --out, "
                       "or pass --force to write the demo into it")
    return earlier


def write_if_changed(path: Path, text: str) -> bool:
    """Leaves an identical file alone, so reruns see the same bytes and skip what depends on them."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def make_data(data_dir: Path, train_rows: int, test_rows: int, calib_rows: int) -> dict[str, Path]:
    from fraudq.demo.synth import generate_dialogues, to_jsonl

    rows = generate_dialogues(train_rows + test_rows + calib_rows, seed=SEED)
    splits = {"train": rows[:train_rows], "test": rows[train_rows:train_rows + test_rows],
              "calib": rows[train_rows + test_rows:]}
    paths = {}
    for name, part in splits.items():
        paths[name] = data_dir / f"{name}.jsonl"
        write_if_changed(paths[name], to_jsonl(part))
    return paths


def train_model(train: Path, model_dir: Path, epochs: float, force: bool, log_file: Path, say, err) -> str:
    """Trains the tiny classifier unless its stamp matches the training data and settings."""
    from tqdm import tqdm

    started = time.perf_counter()
    bar = None

    def progress(message: str) -> None:
        print(message)  # into the log file
        match = re.match(r"step (\d+)/(\d+) .*loss ([\d.]+)", message)
        if match and bar is not None:
            bar.total = int(match.group(2))
            bar.set_postfix_str(f"loss {float(match.group(3)):.3f}", refresh=False)
            bar.update(int(match.group(1)) - bar.n)

    # torch and transformers print warnings on import: they go to the log too.
    with stage_log(log_file, append=True):
        from fraudq.demo.reference import PRESETS, train_reference

        spec = json.dumps(PRESETS[PRESET], sort_keys=True, default=str)
        inputs = {"train": file_sha256(train), "preset": PRESET,
                  "preset_sha256": hashlib.sha256(spec.encode()).hexdigest(), "seed": 0, "epochs": epochs}
        stamp = read_stamp(model_dir)
        if (not force and stamp and stamp.get("inputs") == inputs and (model_dir / "config.json").is_file()
                and fingerprint(inspect_model(model_dir)) == stamp.get("output_sha256")):
            report = None
        else:
            rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines() if line]
            bar = tqdm(desc="train", unit="step", file=err, disable=None,
                       bar_format="fraudq demo {desc:<13} {n_fmt}/{total_fmt} steps |{bar:20}| {elapsed}{postfix}")
            try:
                report = train_reference(PRESET, rows, model_dir, seed=0, epochs=epochs, log=progress)
            finally:
                bar.close()
            write_stamp(model_dir, "train", inputs, fingerprint(inspect_model(model_dir)))
    if report is None:
        say(f"train          skipped: inputs unchanged ({shown(model_dir)})")
        return "skipped"
    losses = report["loss_history"]
    final = f", final loss {losses[-1]['loss']:.3f}" if losses else ""
    say(f"train          ran: {report['steps']} steps on {report['rows']} rows in "
        f"{time.perf_counter() - started:.1f} s{final} -> {shown(model_dir)}")
    return "ran"


def run_demo(out: Path, force: bool = False, train_rows: int | None = None, test_rows: int | None = None,
             epochs: float | None = None, calib_rows: int | None = None, stdout=None, stderr=None) -> dict:
    out_stream, err = stdout or sys.stdout, stderr or sys.stderr

    def say(message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=out_stream)

    started = time.perf_counter()
    out = Path(out)
    resuming = check_out_dir(out, force) and not force
    settings = {"train_rows": train_rows or TRAIN_ROWS, "test_rows": test_rows or TEST_ROWS,
                "calib_rows": calib_rows or CALIB_ROWS, "epochs": EPOCHS if epochs is None else epochs,
                "seed": SEED, "preset": PRESET}
    for key in ("train_rows", "test_rows", "calib_rows"):
        if settings[key] < 2:
            raise BadInput(f"--{key.replace('_', '-')} must be at least 2")
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    atomic_write_json(out / MARKER, {"fraudq_demo": 1, "settings": settings})
    say(f"fraudq demo in {shown(out)}" + (" (resuming: unchanged steps are skipped)" if resuming else ""))

    paths = make_data(out / "data", settings["train_rows"], settings["test_rows"], settings["calib_rows"])
    say(f"data           {settings['train_rows']} train / {settings['test_rows']} test / "
        f"{settings['calib_rows']} calibration dialogues -> {shown(out / 'data')}")
    model_dir = out / "model"
    work = out / "runs"
    train_model(paths["train"], model_dir, settings["epochs"], force, work / "logs" / "train.log", say, err)

    # The config a user can reuse: `fraudq run --config <out>/fraudq.toml`, `fraudq compare ... --config ...`.
    values = {"model": model_dir, "work_dir": work, "calib_data": paths["calib"], "test_data": paths["test"],
              "calib_n": 0, "device": "cpu"}
    config_file = out / "fraudq.toml"
    write_if_changed(config_file, "# written by fraudq demo\n"
                     + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    # The demo is a fixed recipe: FRAUDQ_* variables (FRAUDQ_MODEL, say) must not change what it runs.
    cfg = build_config(config_file, environ={})
    result = run_pipeline(cfg, force=["all"] if force else [], examples=3, out=out_stream, err=err)

    compare_dir = Path(result["compare_dir"])
    say("\nartifacts:")
    for label, path in (("data", out / "data"), ("model (fp32)", model_dir), ("int8", work / "int8"),
                        ("int4", work / "int4"), ("eval results", work / "eval"),
                        ("report", compare_dir / "compare.md"), ("plots", compare_dir / "plots"),
                        ("logs", work / "logs"), ("config", config_file)):
        say(f"  {label:<13} {shown(path)}")
    say(f"next: fraudq compare fp16 int8 int4 --config {shown(config_file)} --examples 5")
    say(f"demo finished in {time.perf_counter() - started:.0f} s")
    return result
