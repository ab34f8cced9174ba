"""Progress on long work: a live bar per step on a terminal, a line every few seconds otherwise (logs, CI).

Rates are measured from the first sample that arrives, not from the start of the step, so an engine's start (tens of
seconds on a CPU) does not make the first minutes read "0.1 samples/s". Everything goes to `console.terminal()`,
which stays the terminal while engine output is redirected to the run's log file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from datagen import console

LINE_SECONDS = 10.0  # without a terminal, at most one progress line per step this often (and one at the end)


@dataclass
class _Clock:
    done0: int  # done at the first report (cached samples count as done, not as speed)
    first: tuple[float, int, int] | None = None  # (time, done, tokens) when the first new sample was seen
    printed: float = 0.0


class ProgressReporter:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._clocks: dict[str, _Clock] = {}

    def __enter__(self):
        out = console.terminal()
        if self.enabled and out.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                      console=Console(file=out), transient=False)
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
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            console.say(message)

    def update(self, step: str, done: int, total: int, tokens: int = 0, pace: str | None = None) -> None:
        """`pace`: an HTTP teacher's achieved concurrency and rate now ("12 in flight, 19.8 req/s")."""
        if not self.enabled:
            return
        now = time.monotonic()
        clock = self._clocks.setdefault(step, _Clock(done))
        if clock.first is None and done > clock.done0:
            clock.first = (now, done, tokens)
        text = ", ".join(t for t in (rate_text(clock, now, done, total, tokens), pace) if t)
        if self._progress is not None:
            if step not in self._tasks:
                self._tasks[step] = self._progress.add_task(step, total=total, rate="")
            self._progress.update(self._tasks[step], completed=done, total=total, rate=text)
            return
        if done < total and (done == clock.done0 or now - clock.printed < LINE_SECONDS):
            return  # nothing new yet (an engine may be starting), or a line was printed a moment ago
        clock.printed = now
        console.say(f"{step}: {done}/{total} samples{', ' + text if text else ''}")


def rate_text(clock: _Clock, now: float, done: int, total: int, tokens: int) -> str:
    """samples/s and output tokens/s since the first sample, and the time left at that pace."""
    if clock.first is None:
        return ""
    since, done1, tokens1 = clock.first
    elapsed = now - since
    if elapsed <= 0 or done <= done1:
        return ""
    rate = (done - done1) / elapsed
    parts = [f"{rate:.1f} samples/s", f"{(tokens - tokens1) / elapsed:.0f} output tokens/s"]
    if done < total:
        parts.append(f"ETA {(total - done) / rate:.0f} s")
    return ", ".join(parts)
