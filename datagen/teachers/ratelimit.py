"""Client-side limits for an HTTP teacher: requests per minute and tokens per minute.

Each limit is a token bucket that refills at `per_minute / 60` a second and holds one second's worth (at least one
request), so requests go out evenly rather than in a burst at the start of every minute. A log of the last minute's
sends also guarantees that no sliding 60-second window ever holds more than the limit (a bucket alone allows up to
its capacity more). A server's `Retry-After` pauses every request of the teacher, not only the one that got it: the
others would be refused too.

A server's own limit is learned as the run goes (`AdaptiveRate`): nothing is held back until the first 429; then
requests are paced evenly at a little under the rate the server was accepting, the pace grows (fast until the
second 429, then slowly) while replies are healthy and is cut on each further 429 (additive increase, multiplicative decrease, at most one cut a second), so
a limit costs a few 429s, not a third of the calls.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

EPS = 1e-6  # float slack, so a wait never shrinks below what the clock can add


class Limit:
    """`per_window` units in any sliding window of `window_s` seconds, paced evenly within it."""

    def __init__(self, per_window: float, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit = float(per_window)
        self.window = window_s
        self.rate = self.limit / window_s
        self.capacity = max(1.0, self.rate)  # one second's worth
        self.level = self.capacity
        self.stamp = clock()
        self.sent: deque[tuple[float, float]] = deque()  # (time, amount) of the sends still inside the window
        self.in_window = 0.0

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds to wait before `amount` may go at `now` (0 if it may go now)."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        while self.sent and self.sent[0][0] <= now - self.window + EPS:
            self.in_window -= self.sent.popleft()[1]
        need = min(amount, self.capacity)  # a request bigger than the bucket waits for a full one, then goes in debt
        wait = 0.0 if self.level >= need - EPS else (need - self.level) / self.rate
        excess = self.in_window + amount - self.limit
        if excess > EPS and self.sent:
            freed = 0.0
            for t, a in self.sent:  # noqa: B007  `t` is read after the loop  # wait until enough of the oldest sends have left the window
                freed += a
                if freed >= excess - EPS:
                    break
            wait = max(wait, t + self.window - now)
        return wait

    def take(self, amount: float, now: float) -> None:
        self.level -= amount
        self.sent.append((now, amount))
        self.in_window += amount


class AdaptiveRate:
    """A learned requests-per-second pace: none until the server first says 429, then AIMD."""

    START = 0.9  # the first pace: this share of what the server accepted in the last second
    CUT = 0.85  # each further 429 multiplies the pace by this (at most once a second: a burst is one signal)
    GROW = 0.02  # while healthy the pace grows by this share of itself a second (at least MIN_GROW) ...
    SLOW_START = 0.1  # ... and by this share until the second 429, so a first guess that was low recovers fast
    MIN_GROW = 0.2
    FLOOR = 0.2  # requests a second, the slowest pace

    def __init__(self):
        self.rate: float | None = None
        self.ok: deque[float] = deque()  # the last second's successes
        self.next_at = 0.0
        self.stamp = 0.0
        self.cut_at = float("-inf")
        self.cuts = 0
        self.slow_start = True

    def success(self, now: float) -> None:
        self.ok.append(now)
        while self.ok and self.ok[0] < now - 1.0:
            self.ok.popleft()
        if self.rate is not None:
            share = self.SLOW_START if self.slow_start else self.GROW
            self.rate += (now - self.stamp) * max(self.MIN_GROW, self.rate * share)
        self.stamp = now

    def limited(self, now: float) -> None:
        if now - self.cut_at < 1.0:
            return
        while self.ok and self.ok[0] < now - 1.0:
            self.ok.popleft()
        if self.rate is None:
            self.rate = max(self.FLOOR, len(self.ok) * self.START)
        else:
            self.rate = max(self.FLOOR, self.rate * self.CUT)
            self.slow_start = False
        self.cut_at, self.stamp = now, now
        self.cuts += 1

    def wait_time(self, now: float) -> float:
        return 0.0 if self.rate is None else max(0.0, self.next_at - now)

    def take(self, now: float) -> None:
        if self.rate is not None:
            self.next_at = max(now, self.next_at) + 1.0 / self.rate


class RateLimiter:
    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic, adaptive: bool = True):
        self.clock = clock
        self.requests = Limit(requests_per_minute, clock=clock) if requests_per_minute else None
        self.tokens = Limit(tokens_per_minute, clock=clock) if tokens_per_minute else None
        self.adaptive = AdaptiveRate() if adaptive else None
        self.paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def pause(self, seconds: float) -> None:
        """Hold every request for `seconds` (a server's Retry-After)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def success(self) -> None:
        if self.adaptive is not None:
            self.adaptive.success(self.clock())

    def limited(self) -> None:
        """The server answered 429: learn (or lower) its pace."""
        if self.adaptive is not None:
            self.adaptive.limited(self.clock())

    @property
    def learned_rate(self) -> float | None:
        return self.adaptive.rate if self.adaptive is not None else None

    def wait_time(self, tokens: float) -> float:
        now = self.clock()
        wait = max(0.0, self.paused_until - now)
        if self.requests:
            wait = max(wait, self.requests.wait_time(1, now))
        if self.tokens:
            wait = max(wait, self.tokens.wait_time(tokens, now))
        if self.adaptive is not None:
            wait = max(wait, self.adaptive.wait_time(now))
        return wait

    def take(self, tokens: float) -> None:
        now = self.clock()
        if self.requests:
            self.requests.take(1, now)
        if self.tokens:
            self.tokens.take(tokens, now)
        if self.adaptive is not None:
            self.adaptive.take(now)

    async def acquire(self, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # each batch runs in its own event loop; a lock belongs to one loop
            self._lock, self._loop = asyncio.Lock(), loop
        assert self._lock is not None
        async with self._lock:  # one waiter at a time keeps the order fair and the buckets consistent
            while (wait := self.wait_time(tokens)) > 0:
                await asyncio.sleep(wait)
            self.take(tokens)


class ConcurrencyWindow:
    """How many requests an HTTP teacher keeps in flight, at most `ceiling` (its `max_concurrency`): AIMD.

    It starts at `START` and, until the first congestion signal, doubles each round trip while replies are healthy
    (one more per success) and each second in any case (so long generations are not held back for minutes: it
    reaches the ceiling within seconds); after the first signal it grows by one per window's worth of successes. A 429 or a timeout halves it; so does
    a climb in latency (seconds per output token, smoothed, over `LATENCY_CUT` times the best seen), the sign of a
    server that saturates without ever saying 429. At most one cut a second; never below 1.
    """

    START = 4
    LATENCY_CUT = 3.0
    SMOOTH = 0.1  # the weight of a new latency in the moving average
    WARMUP = 16  # successes before latency is judged

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic):
        self.ceiling = ceiling
        self.limit = float(min(ceiling, self.START))
        self.clock = clock
        self.started = clock()
        self.slow_start = True
        self.cut_at = float("-inf")
        self.best: float | None = None
        self.recent: float | None = None
        self.seen = 0
        self.cuts = 0
        self.peak = self.limit

    @property
    def allowed(self) -> int:
        if self.slow_start:
            doubled = self.START * 2 ** min(16.0, self.clock() - self.started)
            self.limit = min(float(self.ceiling), max(self.limit, doubled))
            self.peak = max(self.peak, self.limit)
        return max(1, int(self.limit))

    def success(self, seconds: float | None = None, tokens: int | None = None) -> None:
        self.seen += 1
        self.limit = min(self.ceiling, self.limit + (1.0 if self.slow_start else 1.0 / self.limit))
        self.peak = max(self.peak, self.limit)
        if seconds is None or not tokens:
            return
        per_token = seconds / tokens
        self.recent = per_token if self.recent is None else (1 - self.SMOOTH) * self.recent + self.SMOOTH * per_token
        self.best = per_token if self.best is None else min(self.best, self.recent)
        if self.seen >= self.WARMUP and self.recent > self.LATENCY_CUT * self.best:
            self.congested()

    def congested(self) -> None:
        """A 429, a timeout, or latency that climbed: halve the window (once a second at most)."""
        now = self.clock()
        if now - self.cut_at < 1.0:
            return
        self.cut_at = now
        self.slow_start = False
        self.limit = max(1.0, self.limit / 2)
        self.cuts += 1
        if self.recent is not None and self.best is not None:
            self.recent = (self.recent + self.best) / 2  # judge the smaller window afresh, not by the old average


class Meter:
    """What an HTTP teacher achieved while it streamed: requests in flight (integrated over time: their mean is the
    achieved concurrency) and replies (their rate is the achieved rate), for the progress line and the run's summary
    (stored per run in `_runs.summary`)."""

    RECENT_S = 10.0  # the live rate is over this many seconds

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.inflight = 0
        self.busy_s = 0.0  # request-seconds in flight
        self.open_s = 0.0  # seconds with a stream open
        self.replies = 0
        self.limited = 0  # 429s
        self.streams = 0
        self.stamp: float | None = None
        self.recent: deque[float] = deque()

    def _tick(self) -> float:
        now = self.clock()
        if self.stamp is not None and self.streams:
            self.busy_s += (now - self.stamp) * self.inflight
            self.open_s += now - self.stamp
        self.stamp = now
        return now

    def open(self) -> None:
        self._tick()
        self.streams += 1

    def close(self) -> None:
        self._tick()
        self.streams = max(0, self.streams - 1)

    def begin(self) -> None:
        self._tick()
        self.inflight += 1

    def end(self, reply: bool, limited: bool = False) -> None:
        now = self._tick()
        self.inflight -= 1
        self.limited += limited
        if reply:
            self.replies += 1
            self.recent.append(now)

    def snapshot(self) -> tuple[float, float, int, int]:
        """(request-seconds in flight, seconds open, replies, 429s) so far: a step takes the difference."""
        self._tick()
        return self.busy_s, self.open_s, self.replies, self.limited

    def live(self) -> str:
        """The progress line's words: in flight now, and replies a second over the last RECENT_S seconds."""
        now = self._tick()
        while self.recent and self.recent[0] < now - self.RECENT_S:
            self.recent.popleft()
        return f"{self.inflight} in flight, {len(self.recent) / self.RECENT_S:.1f} req/s"
