"""Token buckets for requests per minute and tokens per minute (an HTTP teacher's server-side limits)."""

from __future__ import annotations

import asyncio
import time


class Bucket:
    """Holds up to `per_minute` units and refills continuously at `per_minute / 60` units a second."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float) -> float:
        self._refill()
        amount = min(amount, self.capacity)  # a request bigger than the bucket waits for a full bucket, not forever
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None):
        self.requests = Bucket(requests_per_minute) if requests_per_minute else None
        self.tokens = Bucket(tokens_per_minute) if tokens_per_minute else None
        self._lock = asyncio.Lock() if (self.requests or self.tokens) else None

    async def acquire(self, tokens: int) -> None:
        if self._lock is None:
            return
        async with self._lock:  # one waiter at a time keeps the order fair and the buckets consistent
            while True:
                wait = max(self.requests.wait_time(1) if self.requests else 0.0,
                           self.tokens.wait_time(tokens) if self.tokens else 0.0)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests:
                self.requests.take(1)
            if self.tokens:
                self.tokens.take(tokens)
