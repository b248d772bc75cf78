"""What a command shows: its own lines and progress bars; library output goes to a log file."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path


class _Chatter(io.TextIOBase):
    """Where library output (GPTQModel's tables, HF progress bars) goes while a stage runs: the stage's log.

    Loggers that grabbed this stream during a stage keep it; outside a stage it writes to the real stderr.
    """

    sink = None

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


@contextlib.contextmanager
def stage_log(log_file: Path, append: bool = False):
    """Sends stdout and stderr (GPTQModel's tables, HF progress bars, import warnings) to a file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    previous = _CHATTER.sink
    with open(log_file, "a" if append else "w", encoding="utf-8") as sink:
        _CHATTER.sink = sink
        try:
            with contextlib.redirect_stdout(_CHATTER), contextlib.redirect_stderr(_CHATTER):
                yield
        finally:
            _CHATTER.sink = previous


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
def row_progress(desc: str):
    """A progress bar over rows on stderr, handed to library code as a plain callback."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit="row", file=sys.stderr, disable=None) as bar:
        yield bar.update
