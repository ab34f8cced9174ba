"""The one user-error type. The CLI catches it and exits 2 (bad input) without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad spec, a missing file, a store in use. The message says what to change."""


class RunFailed(Exception):
    """A run that started but could not finish (error budget exceeded, engine crashed). The CLI exits 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that every Ctrl-C path (commit what finished, stop engines) runs for it
    too; the CLI exits 143 for it instead of 130."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()
