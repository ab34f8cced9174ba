"""A quiet console: what engines and libraries print goes to a log file beside the store, not the terminal.

vLLM, torch and the libraries under them print from Python and from C++ (Triton, NUMA binding, LD_PRELOAD hints,
deprecation warnings), so redirecting Python's logging is not enough: file descriptors 1 and 2 themselves point at
the log while a run works. datagen's own lines (progress, the engine start, the funnel) go to `terminal()`, a copy
of the real stderr taken before the redirect. Errors are raised as exceptions and reach the terminal once the
descriptors are back. `--verbose` (verbose=True) leaves everything on the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO

from datagen.errors import UserError

_terminal: IO[str] | None = None  # the real stderr while descriptors 1 and 2 point at the log
_lock = threading.Lock()


def terminal() -> IO[str]:
    """Where datagen's own messages go: the terminal, also while engine output is redirected."""
    return _terminal or sys.stderr


def say(message: str) -> None:
    print(message, file=terminal(), flush=True)


@contextlib.contextmanager
def quiet(log_path: Path, verbose: bool = False, what: str = "run"):
    """Send everything written to descriptors 1 and 2 to `log_path` (appended) for the duration."""
    global _terminal
    with _lock:
        nested = _terminal is not None
    if verbose or nested or not _has_fds():
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(log_path, "ab") as log:
        log.write(f"\n==== datagen {what} at {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n".encode())
        log.flush()
        own = _writes_to_fd2(sys.stderr)  # else (a notebook, a test's capture) sys.stderr is not affected anyway
        term = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace") if own \
            else sys.stderr
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with _lock:
                _terminal = term
            yield
        except Exception as exc:
            if not isinstance(exc, UserError):  # the message reaches the terminal; the engine's account is in the log
                print(f"(engine and library messages: {log_path})", file=term, flush=True)
            raise
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[1], 1)
            os.dup2(saved[2], 2)
            for fd in saved.values():
                os.close(fd)
            with _lock:
                _terminal = None
            if own:
                term.close()


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except Exception:  # noqa: BLE001  (io.UnsupportedOperation, or a stream without fileno at all)
        return False


def _has_fds() -> bool:
    """A process without real descriptors 1 and 2 (some embedders) has nothing to redirect."""
    try:
        os.fstat(1)
        os.fstat(2)
        return True
    except OSError:
        return False
