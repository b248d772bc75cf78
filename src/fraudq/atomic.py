"""Outputs appear complete or not at all: write beside the target, fsync, then rename.

Before any work, `check_target` refuses an output that would destroy an input or cannot be written, and
`hold` claims the target for the whole run, so two runs never write the same output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from fraudq.errors import BadInput

TMP_PREFIX = ".fraudq-tmp-"


def _tmp_prefix(target: Path) -> str:
    # The writer's pid is in the name, so a later run can tell a dead run's leftovers from a live run's work.
    return f"{TMP_PREFIX}{os.getpid()}-{target.name}-"


# mkstemp and mkdtemp add 8 random characters; atomic_dir's "old-" folder is the longest name made beside a target.
_TMP_EXTRA = len("old-") + 8
LOCK_SUFFIX = ".fraudq-lock"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


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


# ---------------------------------------------------------------- checks before the work


def is_model_folder(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    return any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_names(folder: Path, names: Iterable[str]) -> None:
    """Every name made on the way, temporary prefix included, must fit the filesystem, or the run would fail
    only at its very end."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise BadInput(f"{existing} is a file, so nothing can be written under it")
    limit = os.pathconf(existing, "PC_NAME_MAX")
    for path in [folder, *folder.parents]:
        if not path.exists() and len(path.name.encode()) > limit:
            raise BadInput(f"the folder name {path.name[:40]}... is longer than this filesystem allows ({limit} bytes)")
    for name in names:
        if len(_tmp_prefix(Path(name)).encode()) + _TMP_EXTRA > limit:
            raise BadInput(f"the name {name[:40]}... is too long for this filesystem: with fraudq's temporary "
                           f"prefix it passes the {limit} bytes a name may have; pick a shorter one")


def _refuse_inputs(target: Path, kind: str, reads: Iterable) -> None:
    resolved = target.resolve()
    for path in filter(None, reads):
        source = Path(path).resolve()
        if resolved == source or (target.exists() and source.exists() and os.path.samefile(target, source)):
            raise BadInput(f"the output {target} is {path}, which this run reads; pick another output")
        if source in resolved.parents:
            raise BadInput(f"the output {target} lies inside {path}, which this run reads; pick another output")
        if kind == "checkpoint" and resolved in source.parents:
            raise BadInput(f"the output {target} holds {path}, which this run reads; pick another output")


def _refuse_model_folders(target: Path, kind: str) -> None:
    resolved = target.resolve()
    # A checkpoint may replace a model folder whole; files written into one would change it.
    folders = [resolved, *resolved.parents] if kind == "folder" else list(resolved.parents)
    for folder in folders:
        if folder.is_dir() and is_model_folder(folder):
            raise BadInput(f"the output {target} lies inside the model folder {folder}; write it elsewhere")


def check_target(target: str | Path, kind: str = "file", reads: Iterable = (), names: Iterable[str] = ()) -> None:
    """Refuses, before any work, an output that names nothing, is of the wrong kind, would replace or land inside
    an input (`reads`) or a model folder, or whose names (`names`: the files written beside it) cannot be made.

    kind: "file"; "checkpoint", a folder replaced whole; "folder", one that files are written into.
    """
    target = Path(target)
    if kind != "folder" and target.name in ("", ".", ".."):
        raise BadInput(f"the output path {str(target)!r} names no file or folder (empty, '.' or '..')")
    if kind == "file" and target.is_dir():
        raise BadInput(f"the output {target} is a folder; give a file path")
    if kind != "file" and target.exists() and not target.is_dir():
        raise BadInput(f"the output {target} is a file; give a folder path")
    _refuse_inputs(target, kind, reads)
    _refuse_model_folders(target, kind)
    if kind == "folder":
        _check_names(target, names)
    else:
        _check_names(target.parent, [target.name, *names])


# ---------------------------------------------------------------- one run per target


def lock_path(target: Path, inside: bool = False) -> Path:
    target = Path(target)
    return target / LOCK_SUFFIX if inside else target.parent / f".{target.name}{LOCK_SUFFIX}"


def _make_folders(folder: Path) -> list[Path]:
    """mkdir -p that returns the folders it made, deepest last; failures are one line."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    for path in missing:
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise BadInput(f"cannot create the folder {path} ({exc.strerror})") from None
    return missing


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def _lock(path: Path, target: Path) -> int:
    """flock on a lock file holding our pid; the kernel drops it when the holder dies, so a killed run's
    leftover file blocks no one."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise BadInput(f"cannot write to {path.parent} ({exc.strerror}); pick a writable output") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise BadInput(f"{target} is being written by another fraudq run (pid {holder}); "
                           "wait for it to end or pick another output") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def hold(target: str | Path, inside: bool = False):
    """An exclusive claim on `target` for a whole run: a lock file beside it (inside it for a folder that files
    are written into), removed at the end with any folder made for it that stayed empty."""
    target = Path(target)
    path = lock_path(target, inside)
    made = _make_folders(path.parent)
    try:
        fd = _lock(path, target)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
