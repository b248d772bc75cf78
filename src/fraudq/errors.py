"""Errors a user can fix. The CLI prints their one-line message and exits with their code."""


class BadInput(Exception):
    """Wrong data, path, flag or model: exit 2, no traceback."""

    exit_code = 2


class NeedsFlag(BadInput):
    """Bad input that a flag would allow. The advice names the flag only where the running command has it
    (`for_command`); elsewhere it gives `otherwise`."""

    def __init__(self, message: str, key: str, advice: str, otherwise: str):
        super().__init__(f"{message}; {advice}")
        self.key, self.message, self.otherwise = key, message, otherwise

    def for_command(self, params) -> str:
        return str(self) if self.key in params else f"{self.message}; {self.otherwise}"


class NotAvailable(BadInput):
    """A resource the run needs is missing on this machine (no GPU, say)."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP (docker stop, systemd, a batch scheduler, a closed terminal), raised where the program
    is so clean-up runs as for Ctrl-C. A BaseException, like KeyboardInterrupt, so no `except Exception` eats it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
