"""What a command shows: its own lines and progress bars; library output goes to a log file."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path


class _Chatter(io.TextIOBase):
    """Where library output (GPTQModel's tables, HF progress bars) goes while a stage runs: the stage's log.

    Loggers that grabbed this stream during a stage keep it; outside a stage it writes to the real stderr.
    """

    sink = None
    terminal = None  # the stderr a stage replaced: where fraudq's own progress bars still draw

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        target = self.sink or sys.__stderr__
        if target is not None:
            target.write(text)
        return len(text)

    def flush(self) -> None:
        target = self.sink or sys.__stderr__
        if target is not None:
            target.flush()


_CHATTER = _Chatter()


class _LazyLog(io.TextIOBase):
    """A log file created on its first write, so a command refused before any library spoke leaves none."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode, self.handle = path, mode, None

    def write(self, text: str) -> int:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, self.mode, encoding="utf-8")
        return self.handle.write(text)

    def flush(self) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _terminal_handlers(streams: list) -> list[logging.StreamHandler]:
    """Logging handlers that write to a terminal stream: libraries imported before a stage bound them there."""
    loggers = [logging.getLogger(), *(value for value in logging.root.manager.loggerDict.values()
                                      if isinstance(value, logging.Logger))]
    return [handler for logger in loggers for handler in logger.handlers
            if type(handler) is logging.StreamHandler and any(handler.stream is s for s in streams)]


@contextlib.contextmanager
def stage_log(log_file: Path, append: bool = False):
    """Sends stdout and stderr (GPTQModel's tables, HF progress bars, import warnings) to a file, and with them the
    logging handlers already bound to the terminal (torch's, set up when it was imported)."""
    previous, terminal = _CHATTER.sink, _CHATTER.terminal
    _CHATTER.terminal = terminal or sys.stderr
    handlers = _terminal_handlers([sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__])
    with contextlib.closing(_LazyLog(Path(log_file), "a" if append else "w")) as sink:
        _CHATTER.sink = sink
        streams = [handler.setStream(_CHATTER) for handler in handlers]
        try:
            with contextlib.redirect_stdout(_CHATTER), contextlib.redirect_stderr(_CHATTER):
                yield
        finally:
            for handler, stream in zip(handlers, streams):
                if stream is not None:
                    handler.setStream(stream)
            _CHATTER.sink, _CHATTER.terminal = previous, terminal


def end_bars() -> None:
    """Before an error line: closes every progress bar still open (a library's, say), and on a terminal clears
    the line, so the error starts a line of its own instead of following a bar."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        stream.write("\r\x1b[K")
        stream.flush()


@contextlib.contextmanager
def command_output(work_dir: Path, command: str, verbose: bool):
    """A command's own lines on stdout; library output in <work_dir>/logs/<command>.log unless `verbose`.
    Yields say(message)."""
    from tqdm import tqdm

    out = sys.stdout

    def say(message: str) -> None:
        tqdm.write(message, file=out)  # above any progress bar on stderr

    if verbose:
        yield say
        return
    with stage_log(Path(work_dir) / "logs" / f"{command}.log"):
        yield say


def terminal() -> io.TextIOBase:
    """Where fraudq's own progress bars draw: the terminal's stderr, also while a stage logs library output."""
    return _CHATTER.terminal or sys.stderr


def shown(path) -> str:
    """A path as the user would type it: relative to the working folder when it lies inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


@contextlib.contextmanager
def row_progress(desc: str, unit: str = "row"):
    """A progress bar on stderr (the terminal's, inside a stage), handed to library code as a plain callback."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit, file=terminal(), disable=None) as bar:
        yield bar.update
