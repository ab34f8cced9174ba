"""Client-side limits for an HTTP teacher: requests per minute and tokens per minute.

Each limit is a token bucket that refills at `per_minute / 60` a second and holds one second's worth (at least one
request), so requests go out evenly rather than in a burst at the start of every minute. A log of the last minute's
sends also guarantees that no sliding 60-second window ever holds more than the limit (a bucket alone allows up to
its capacity more). A server's `Retry-After` pauses every request of the teacher, not only the one that got it: the
others would be refused too.
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


class RateLimiter:
    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.requests = Limit(requests_per_minute, clock=clock) if requests_per_minute else None
        self.tokens = Limit(tokens_per_minute, clock=clock) if tokens_per_minute else None
        self.paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def pause(self, seconds: float) -> None:
        """Hold every request for `seconds` (a server's Retry-After)."""
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def wait_time(self, tokens: float) -> float:
        now = self.clock()
        wait = max(0.0, self.paused_until - now)
        if self.requests:
            wait = max(wait, self.requests.wait_time(1, now))
        if self.tokens:
            wait = max(wait, self.tokens.wait_time(tokens, now))
        return wait

    def take(self, tokens: float) -> None:
        now = self.clock()
        if self.requests:
            self.requests.take(1, now)
        if self.tokens:
            self.tokens.take(tokens, now)

    async def acquire(self, tokens: int) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # each batch runs in its own event loop; a lock belongs to one loop
            self._lock, self._loop = asyncio.Lock(), loop
        assert self._lock is not None
        async with self._lock:  # one waiter at a time keeps the order fair and the buckets consistent
            while (wait := self.wait_time(tokens)) > 0:
                await asyncio.sleep(wait)
            self.take(tokens)
