"""What tune reads: the validation set (given, or a seeded part of the calibration data) and each recipe's
calibration file, built once under <work_dir>/tune/calib/ and stamped like `fraudq run`'s calib stage."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from fraudq.atomic import atomic_write_text
from fraudq.calib import build_calibration, meta_path
from fraudq.config import Config
from fraudq.data import file_sha256, read_jsonl
from fraudq.errors import BadInput
from fraudq.tune.space import Recipe
from fraudq.workspace import Hashes, stamp_reasons, write_stamp


@dataclass
class Validation:
    path: Path
    rows: int
    calib_source: str  # the calibration data recipes use unless they name their own
    split: dict | None  # how the rows were split off calib_data, when they were


def _labelled(path: str, what: str):
    dataset = read_jsonl(path, need_label=True)
    if dataset.format != "labelled":
        raise BadInput(f"{what} {path} is a chat-format file; tune needs labelled rows (instruction, input, label)")
    return dataset


def _split(cfg: Config, folder: Path) -> Validation:
    if not cfg.calib_data:
        raise BadInput("missing --val-data (or labelled calib_data in the config, to split a validation part off)")
    dataset = _labelled(cfg.calib_data, "calib_data")
    count = len(dataset.rows)
    take = max(1, round(cfg.tune_val_fraction * count))
    if count - take < 1:
        raise BadInput(f"calib_data {cfg.calib_data} has {count} rows: too few to split a validation part off; "
                       "pass --val-data")
    chosen = set(random.Random(cfg.seed).sample(range(count), take))
    lines = Path(cfg.calib_data).read_bytes().decode("utf-8").split("\n")
    lines[0] = lines[0].removeprefix("\ufeff")
    parts = {True: [], False: []}
    for index, row in enumerate(dataset.rows):
        parts[index in chosen].append(lines[row.line - 1].rstrip("\r"))
    val, rest = folder / "val.jsonl", folder / "calib.jsonl"
    atomic_write_text(val, "\n".join(parts[True]) + "\n")
    atomic_write_text(rest, "\n".join(parts[False]) + "\n")
    split = {"from": str(cfg.calib_data), "from_sha256": dataset.sha256, "seed": cfg.seed,
             "fraction": cfg.tune_val_fraction, "val_rows": take, "calib_rows": count - take,
             "val": str(val), "calib": str(rest)}
    return Validation(val, take, str(rest), split)


def validation(cfg: Config, tune_dir: Path, log) -> Validation:
    """--val-data as given, or a seeded part of calib_data (the rest then calibrates). Never the test data."""
    if cfg.tune_val_data:
        dataset = _labelled(cfg.tune_val_data, "--val-data")
        chosen = Validation(Path(cfg.tune_val_data), len(dataset.rows), cfg.calib_data, None)
    else:
        chosen = _split(cfg, tune_dir / "split")
        log(f"validation: {chosen.rows} rows split off {cfg.calib_data} (seed {cfg.seed}, fraction "
            f"{cfg.tune_val_fraction:g}) into {chosen.path}; calibration uses the other {chosen.split['calib_rows']} "
            f"rows ({chosen.calib_source})")
    if cfg.test_data and Path(cfg.test_data).is_file() and file_sha256(Path(cfg.test_data)) == file_sha256(chosen.path):
        raise BadInput("the validation data is the test data; the test set only reports the winner, it never chooses")
    return chosen


def calib_file(cfg: Config, recipe: Recipe, source: str, tune_dir: Path, hashes: Hashes, log) -> Path:
    """The calibration file of this recipe's source and size, built when missing or stale."""
    data = recipe.calib_data or source
    if not data:
        raise BadInput("missing --calib-data (or calib_data in the config): tune calibrates every candidate")
    rows = cfg.calib_n if recipe.calib_n is None else recipe.calib_n
    tag = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:8]
    out = tune_dir / "calib" / f"{Path(data).stem}-{tag}-n{rows}.jsonl"
    calib_cfg = dataclasses.replace(cfg, calib_n=rows)
    inputs = {"model": hashes.model(Path(cfg.model)), "calib_data": hashes.file(Path(data)),
              "config": {"calib_n": rows, "max_len": cfg.max_len, "seed": cfg.seed, "instruction": cfg.instruction}}

    def output():
        return hashes.file(out) if meta_path(out).is_file() else None

    if stamp_reasons(out, inputs, output):
        build_calibration(calib_cfg, data, out, force=True, log=log)
        hashes.forget(out)
        write_stamp(out, "calib", inputs, output())
    return out
