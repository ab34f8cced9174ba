"""The one user-error type. The CLI catches it and exits 2 (bad input) without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad spec, a missing file, a store in use. The message says what to change."""


class RunFailed(Exception):
    """A run that started but could not finish (error budget exceeded, engine crashed). The CLI exits 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that every Ctrl-C path (commit what finished, stop engines) runs for it
    too; the CLI exits 143 for it instead of 130."""


_terminated = False  # a SIGTERM arrived (what a DuckDB "Query interrupted" then stands for)


def raise_terminated(signum, frame) -> None:
    global _terminated
    _terminated = True
    raise Terminated()


def as_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The interrupt `exc` stands for, or None. A signal that arrives while DuckDB runs a query raises its
    KeyboardInterrupt (or Terminated) inside DuckDB, which drops it and raises RuntimeError("Query interrupted")
    instead (or InterruptException); that is Ctrl-C (or SIGTERM) all the same."""
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if type(exc).__name__ == "InterruptException" or (isinstance(exc, RuntimeError)
                                                     and str(exc) == "Query interrupted"):
        return Terminated() if _terminated else KeyboardInterrupt()
    return None
