"""How a fraudq command ends: bad input in one line and exit 2, signals in their exit codes after clean-up, and
never a raw traceback."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import traceback

import typer
import typer.core

try:  # typer 0.2x vendors its own click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError

from fraudq.errors import BadInput, NeedsFlag, Stopped
from fraudq.runtime import setup_environment


@contextlib.contextmanager
def _usage_errors_on_one_line():
    try:
        yield
    except NoArgsIsHelpError:
        raise
    except UsageError as exc:
        message = " ".join(exc.format_message().split())
        command = exc.ctx.command_path if exc.ctx else "fraudq"
        typer.echo(f"fraudq: error: {message} (see '{command} --help')", err=True)
        raise typer.Exit(2) from None


class OneLineUsageErrors(typer.core.TyperGroup):
    """An unknown flag or a value of the wrong type is bad input too: one line on stderr, exit 2."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_on_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_on_one_line():
            return super().invoke(ctx)



def _raise_stopped(signum, _frame):
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_as_exceptions():
    """SIGTERM and SIGHUP raise Stopped, unless the parent chose to ignore them (nohup)."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def friendly_errors(command):
    """Bad input ends in one line and exit 2; Ctrl-C in exit 130, SIGTERM in 143 and SIGHUP in 129, each after
    removing what was half-written; nothing ends in a raw traceback."""

    params = inspect.signature(command).parameters  # advice names only flags this command has

    def say(line: str) -> None:
        from fraudq.console import end_bars

        end_bars()
        typer.echo(line, err=True)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        setup_environment()
        try:
            with stop_signals_as_exceptions():
                return command(*args, **kwargs)
        except BadInput as exc:
            say(f"fraudq: error: {exc.for_command(params) if isinstance(exc, NeedsFlag) else exc}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            say("fraudq: interrupted; nothing partial was left behind")
            raise typer.Exit(130) from None
        except Stopped as exc:
            name = signal.Signals(exc.signum).name
            say(f"fraudq: stopped by {name}; nothing partial was left behind")
            raise typer.Exit(128 + exc.signum) from None
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in fraudq or a library: one line, details on request
            if os.environ.get("FRAUDQ_DEBUG"):
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            say(f"fraudq: failed: {type(exc).__name__}: {first[:300]} (set FRAUDQ_DEBUG=1 for details)")
            raise typer.Exit(1) from None

    return wrapper
