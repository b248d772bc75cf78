"""Helpers several test modules share: data files, output-folder checks, and small labelled score sets."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def rows_of(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def write_rows(path: Path, rows, raw_lines: dict[int, str] | None = None) -> Path:
    """JSONL of `rows`; raw_lines replaces line N (1-based) by a literal string."""
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for number, text in (raw_lines or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[Path]:
    return sorted(folder.glob(".fraudq-tmp-*"))


def copy_model(project, tmp_path: Path, name: str = "m") -> Path:
    target = tmp_path / name
    shutil.copytree(project.model, target)
    return target


def own_work_config(project, root: Path, name: str) -> Path:
    """A config on the shared tiny model and data with a work dir of its own under `root` (the shared runs/
    folder is left alone)."""
    from conftest import CALIB_ROWS, write_config

    return write_config(root / name, model=str(project.model), work_dir=str(root / "runs"),
                        calib_data=str(project.train), test_data=str(project.test), calib_n=CALIB_ROWS, device="cpu")


LABELS = [True, False, True, True, False, False, True, False]
# Baseline: at its threshold 0 it flags 6 rows (the 0.5 negative included): recall 3/4, precision 1/2.
BASE = [3.0, 2.0, 2.0, 1.0, 1.0, 0.5, -1.0, -2.0]
# Other model: points >=3 (1/1), >=2 (2/3, a tied pair), >=1 (4/5, a tied pair), >=0 (4/7), >=-1 (4/8).
OTHER = [2.0, 2.0, 3.0, 1.0, 0.0, 0.0, 1.0, -1.0]
