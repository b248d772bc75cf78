"""Errors a user can fix. The CLI prints their one-line message and exits with their code."""


class BadInput(Exception):
    """Wrong data, path, flag or model: exit 2, no traceback."""

    exit_code = 2


class NotAvailable(BadInput):
    """A resource the run needs is missing on this machine (no GPU, say)."""
