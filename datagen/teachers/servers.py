"""Several servers behind one HTTP teacher: each attempt goes to the least-loaded server that is not paused.

A server that fails `PAUSE_AFTER` attempts in a row (a connection error, a timeout, a retryable HTTP status) is paused
while the others carry on: 1 s the first time, doubling with each pause in a row, at most 60 s; one success resets
it. When every server is paused, an attempt waits for the first to come back. Rate limits stay per teacher (the
teacher's limiter); concurrency is the teacher's `max_concurrency` in all, spread by load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

PAUSE_AFTER = 3
PAUSE_BASE_S = 1.0
PAUSE_MAX_S = 60.0


@dataclass
class Server:
    url: str  # the chat completions endpoint
    label: str  # what `requests.worker` records: scheme, host, port and path, never credentials
    inflight: int = 0
    failures_in_a_row: int = 0
    pauses_in_a_row: int = 0
    paused_until: float = 0.0
    served: int = 0
    failed: int = 0
    pauses: int = 0


def label_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}".rstrip("/")


class ServerPool:
    def __init__(self, base_urls: list[str]):
        self.servers = [Server(u.rstrip("/") + "/chat/completions", label_of(u)) for u in base_urls]

    async def acquire(self) -> Server:
        while True:
            now = time.monotonic()
            ready = [s for s in self.servers if s.paused_until <= now]
            if ready:
                server = min(ready, key=lambda s: s.inflight)  # ties: the first listed
                server.inflight += 1
                return server
            await asyncio.sleep(min(s.paused_until for s in self.servers) - now)

    def release(self, server: Server, ok: bool) -> None:
        """After an attempt: `ok` False for a failure worth pausing over (not a 4xx the request itself caused)."""
        server.inflight -= 1
        if ok:
            server.served += 1
            server.failures_in_a_row = server.pauses_in_a_row = 0
            return
        server.failed += 1
        server.failures_in_a_row += 1
        if server.failures_in_a_row >= PAUSE_AFTER and len(self.servers) > 1:
            server.paused_until = time.monotonic() + min(PAUSE_MAX_S, PAUSE_BASE_S * 2 ** server.pauses_in_a_row)
            server.pauses_in_a_row += 1
            server.pauses += 1
            server.failures_in_a_row = 0
