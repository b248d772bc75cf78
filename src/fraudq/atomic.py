"""Outputs appear complete or not at all: write beside the target, fsync, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from fraudq.errors import BadInput

TMP_PREFIX = ".fraudq-tmp-"


def _tmp_prefix(target: Path) -> str:
    # The writer's pid is in the name, so a later run can tell a dead run's leftovers from a live run's work.
    return f"{TMP_PREFIX}{os.getpid()}-{target.name}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale(target: Path) -> None:
    """Drops temporary files and folders left beside `target` by a killed run (SIGKILL, power loss).

    If the run died between moving the old output aside and renaming the new one in, the old one is put back.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    pattern = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-" + re.escape(target.name) + r"-(old-)?[a-z0-9_]{8}")
    for entry in sorted(target.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        previous = entry / "previous"
        if match.group(2) and previous.exists() and not target.exists():
            os.replace(previous, target)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def check_writable(target: Path, force: bool) -> None:
    """Refuses before any work is done, so a refused run loses nothing."""
    remove_stale(target)
    if target.exists() and not force:
        raise BadInput(f"{target} already exists; pass --force to replace it")


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(target: str | Path, force: bool = False):
    """Yields a temporary folder beside `target`; on success it replaces `target` in one rename.

    On any failure (Ctrl-C included) the temporary folder is removed and `target` is untouched.
    """
    target = Path(target)
    check_writable(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    old = None
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700 folders
        _fsync_tree(tmp)
        if target.exists():
            # rename(2) cannot replace a non-empty folder: move the old one aside first, then drop it.
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target) + "old-", dir=target.parent))
            os.replace(target, old / "previous")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:  # interrupted between the two renames: put the previous output back
            if (old / "previous").exists() and not target.exists():
                os.replace(old / "previous", target)
            shutil.rmtree(old, ignore_errors=True)
        raise


def atomic_write_text(target: str | Path, text: str) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes 0600 files
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(target: str | Path, obj) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
