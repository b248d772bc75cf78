"""Where fraudq keeps its artifacts under work_dir, and one answer to "is this artifact current?".

calib.jsonl, int8/, int4/ and compare/ carry a stamp beside them (<artifact>.stamp.json: the hashes of their
inputs and of the artifact itself); an eval result records its own inputs, so it is its own stamp. Nothing
here looks at timestamps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import fraudq
from fraudq.atomic import atomic_write_json
from fraudq.checkpoint import fingerprint, inspect_model
from fraudq.config import PROMPT_KEYS, Config
from fraudq.data import file_sha256
from fraudq.errors import BadInput
from fraudq.eval.results import read_results

ORIGINAL_NAMES = ("fp16", "bf16", "fp32", "original")


def stamp_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".stamp.json")


def read_stamp(artifact: Path) -> dict | None:
    try:
        stamp = json.loads(stamp_path(artifact).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(artifact: Path, stage: str, inputs: dict, output: str) -> None:
    atomic_write_json(stamp_path(artifact), {"stage": stage, "fraudq": fraudq.__version__, "inputs": inputs,
                                             "output_sha256": output})


def stamp_reasons(artifact: Path, inputs: dict, output: Callable[[], str | None]) -> list[str]:
    """[] when the stamp beside `artifact` vouches for these inputs and the artifact is still what it made."""
    stamp = read_stamp(artifact)
    if stamp is None:
        return ["no stamp"]
    recorded = stamp.get("inputs") or {}
    changed = [key for key in inputs if recorded.get(key) != inputs[key]]
    if changed:
        return [f"{', '.join(changed)} changed"]
    current = output()
    if current is None:
        return ["output missing"]
    if current != stamp.get("output_sha256"):
        return ["output changed since it was stamped"]
    return []


class Hashes:
    """Content hashes, each computed once per run and forgotten when a stage rewrites the file."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.cache: dict[tuple[str, Path], str | None] = {}

    def _get(self, kind: str, path: Path, compute):
        key = (kind, Path(path).resolve())
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def file(self, path: Path) -> str | None:
        return self._get("file", path, lambda: file_sha256(path) if Path(path).is_file() else None)

    def model(self, path: Path) -> str | None:
        def compute():
            if not (Path(path) / "config.json").is_file():
                return None
            try:
                return fingerprint(inspect_model(path, self.cfg.trust_remote_code, self.cfg.allow_pickle))
            except BadInput:
                return None

        return self._get("model", path, compute)

    def forget(self, path: Path) -> None:
        resolved = Path(path).resolve()
        self.cache = {k: v for k, v in self.cache.items() if k[1] != resolved}


@dataclass
class Entry:
    name: str
    model_path: Path | None  # None when the name is a results file given directly
    results_path: Path


def known_names(cfg: Config) -> list[str]:
    names = ["fp16"] if cfg.model else []
    names += sorted(p.name for p in cfg.work_path.glob("int*") if (p / "config.json").is_file())
    return names


def results_name(cfg: Config, model: str) -> str:
    """The name `compare` knows a model folder by, so `eval --model runs/int8` feeds `compare int8`."""
    target = Path(model).resolve()
    if cfg.model and Path(cfg.model).resolve() == target:
        return "fp16"
    for bits in (2, 3, 4, 8):
        if cfg.quant_dir(bits).resolve() == target:
            return f"int{bits}"
    return target.name


def resolve(cfg: Config, name: str) -> Entry:
    """fp16 is the configured model, intN what `quantize --bits N` wrote; anything else is a path."""
    if name in ORIGINAL_NAMES and cfg.model:
        return Entry(name, Path(cfg.model), cfg.eval_results_path(name))
    if re.fullmatch(r"int[2348]", name) and (cfg.quant_dir(int(name[3:])) / "config.json").is_file():
        return Entry(name, cfg.quant_dir(int(name[3:])), cfg.eval_results_path(name))
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        return Entry(path.stem, None, path)
    if path.is_dir() and (path / "config.json").is_file():
        label = path.name or str(path)
        return Entry(label, path, cfg.eval_results_path(label))
    known = ", ".join(known_names(cfg)) or "none yet (run 'fraudq quantize' or set model)"
    raise BadInput(f"no checkpoint or results for '{name}'; known names: {known}; or give a model folder path")


def expected_dtype(cfg: Config, info) -> str:
    """The compute dtype eval would use for this checkpoint under cfg."""
    from fraudq.runtime import compute_dtype, dtype_name, resolve_device

    return dtype_name(compute_dtype(resolve_device(cfg.device, "eval"), info.quant is not None, cfg.dtype))


def stale_reasons(cfg: Config, entry: Entry, data_sha: str, model_fingerprint: str | None = None) -> list[str]:
    """Why a stored eval result is not this model's on this data, eval config, dtype and threshold; [] when it is.

    A result records the hashes of its inputs, so it is its own stamp; `fraudq run` asks this too.
    """
    if not entry.results_path.is_file():
        return ["no result"]
    try:
        result, _ = read_results(entry.results_path)
    except BadInput:  # damaged or half-replaced: evaluate again rather than stop
        return ["result damaged"]
    info = inspect_model(entry.model_path, cfg.trust_remote_code, cfg.allow_pickle)
    if model_fingerprint is None:
        model_fingerprint = fingerprint(info)
    same = {"model": result.get("model_fingerprint") == model_fingerprint,
            "data": result.get("data_sha256") == data_sha,
            "eval config": result.get("eval_config") == {k: getattr(cfg, k) for k in PROMPT_KEYS},
            "dtype": result.get("dtype") == expected_dtype(cfg, info),
            "threshold": result.get("threshold") == (cfg.threshold if cfg.mode == "score" else None)}
    return [f"{what} changed" for what, ok in same.items() if not ok]
