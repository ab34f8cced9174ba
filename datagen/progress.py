"""Progress on long work: a rich bar per step on a terminal, one line per batch otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time


class ProgressReporter:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._started: dict[str, tuple[float, int]] = {}

    def __enter__(self):
        if self.enabled and self.tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                      transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def update(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        first_time, first_done = self._started.setdefault(step, (now, done))
        elapsed = now - first_time
        rate = (done - first_done) / elapsed if elapsed > 0 else 0.0
        rate_text = f"{rate:.1f} samples/s" if rate else ""
        if self._progress is not None:
            if step not in self._tasks:
                self._tasks[step] = self._progress.add_task(step, total=total, rate="")
            self._progress.update(self._tasks[step], completed=done, total=total, rate=rate_text)
            return
        eta = f", ETA {(total - done) / rate:.0f} s" if rate and done < total else ""
        print(f"{step}: {done}/{total} samples{', ' + rate_text if rate_text else ''}{eta}", file=sys.stderr,
              flush=True)
