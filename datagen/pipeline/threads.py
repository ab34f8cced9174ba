"""Calling datagen from a thread that runs an event loop (a Jupyter notebook, an async application).

The HTTP teacher drives its requests with an event loop of its own between the stream's yields, and asyncio allows
one running loop per thread. So when the caller's thread already runs one, the work runs in a worker thread and the
caller waits for it (blocking its loop, as any synchronous call in a notebook cell does).

Ctrl-C (a notebook's "interrupt kernel", or the terminal's under `asyncio.run`) arrives in the caller's thread; it is passed on to the worker as a
KeyboardInterrupt raised at its next Python instruction, which is at most about a second away (the teachers yield
at least every second). The worker then does what a Ctrl-C in the terminal does: it stores every finished sample,
marks the run interrupted and stops its engine; then the KeyboardInterrupt reaches the caller.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import threading
from typing import Any
from collections.abc import Callable

POLL_SECONDS = 0.2  # how often the waiting thread wakes to notice Ctrl-C


def outside_event_loop(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """fn(*args, **kwargs), in a worker thread if this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    return in_worker(fn, *args, **kwargs)


def in_worker(fn: Callable[..., Any], *args, **kwargs) -> Any:
    outcome: dict[str, Any] = {}
    # an Event, not Thread.join: a join interrupted by Ctrl-C marks the thread stopped while it still runs
    # (CPython 3.11, bpo-45274's fix releases the running thread's lock), and the next join returns at once
    finished = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001  (handed to the caller as it is)
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=work, name=f"datagen-{getattr(fn, '__name__', 'work')}", daemon=True)
    worker.start()
    previous = _plain_sigint()
    try:
        while not finished.wait(POLL_SECONDS):
            pass
    except KeyboardInterrupt:
        _raise_in(worker, KeyboardInterrupt)
        finished.wait()  # the worker stores what finished, marks the run interrupted, stops its engine
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _plain_sigint():
    """While the caller's loop is blocked on us, its own SIGINT handler (asyncio.run cancels its main task, which
    cannot happen until we return) would swallow Ctrl-C; Python's default raises KeyboardInterrupt here instead.
    Returns the handler to put back, or None (not the main thread: signals are not ours to handle)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed from C: it could not be put back
        return None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return previous


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise `exc_type` in `thread` at its next Python instruction (CPython's PyThreadState_SetAsyncExc)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))
