"""The one user-error type. The CLI catches it and exits 2 (bad input) without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad spec, a missing file, a store in use. The message says what to change."""


class RunFailed(Exception):
    """A run that started but could not finish (error budget exceeded, engine crashed). The CLI exits 1."""
