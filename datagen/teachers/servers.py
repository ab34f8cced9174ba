"""The servers behind one HTTP teacher (one, or several): each attempt goes to the least-loaded server that is up.

A circuit breaker per server: one that fails `PAUSE_AFTER` attempts in a row (a connection error, a timeout, a
retryable HTTP status) is paused while the others carry on: 1 s the first time, doubling with each pause in a row, at
most `PAUSE_MAX_S`. When its pause ends, one attempt goes to it as a probe while every other waits; the probe's
success closes the breaker (the server takes its share again), its failure pauses it again, for longer. When every
server is paused, attempts wait for the first to come back (a teacher with one server waits out its outage this way;
the teacher's `down_limit_s` bounds how long a request waits). Rate limits stay per teacher (the teacher's limiter);
concurrency is the teacher's in all, spread by load.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

PAUSE_AFTER = 3
PAUSE_BASE_S = 1.0
PAUSE_MAX_S = 15.0
WAIT_STEP_S = 0.1  # how often a waiting attempt looks again while a probe is out


@dataclass
class Server:
    url: str  # the chat completions endpoint
    label: str  # what `requests.worker` records: scheme, host, port and path, never credentials
    inflight: int = 0
    failures_in_a_row: int = 0
    pauses_in_a_row: int = 0
    paused_until: float = 0.0
    probing: bool = False  # a probe is out to this paused server
    served: int = 0
    failed: int = 0
    pauses: int = 0


def label_of(base_url: str) -> str:
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}".rstrip("/")


class ServerPool:
    def __init__(self, base_urls: list[str], endpoint: str = "/chat/completions"):
        self.servers = [Server(u.rstrip("/") + endpoint, label_of(u)) for u in base_urls]

    async def acquire(self) -> tuple[Server, bool]:
        """A server for the next attempt, and whether the attempt is its probe (hand both to `release`)."""
        while True:
            now = time.monotonic()
            ready = [s for s in self.servers if s.paused_until <= now and not s.probing and s.pauses_in_a_row == 0]
            if ready:
                server = min(ready, key=lambda s: s.inflight)  # ties: the first listed
                server.inflight += 1
                return server, False
            due = [s for s in self.servers if s.paused_until <= now and not s.probing]
            if due:  # a pause is over: this attempt is its probe
                server = due[0]
                server.probing = True
                server.inflight += 1
                return server, True
            waits = [s.paused_until - now for s in self.servers if not s.probing and s.paused_until > now]
            await asyncio.sleep(min(waits + [WAIT_STEP_S]))

    @property
    def down(self) -> bool:
        """Every server is paused (its breaker open)."""
        return all(s.pauses_in_a_row > 0 for s in self.servers)

    def release(self, server: Server, ok: bool, probe: bool = False) -> None:
        """After an attempt: `ok` False for a failure worth pausing over (not a 4xx the request itself caused)."""
        server.inflight -= 1
        if probe:
            server.probing = False
        if ok:
            server.served += 1
            server.failures_in_a_row = server.pauses_in_a_row = 0
            return
        server.failed += 1
        if server.pauses_in_a_row and not probe:  # already paused: a straggler sent before says nothing new
            return
        server.failures_in_a_row += 1
        if probe or server.failures_in_a_row >= PAUSE_AFTER:
            server.paused_until = time.monotonic() + min(PAUSE_MAX_S, PAUSE_BASE_S * 2 ** server.pauses_in_a_row)
            server.pauses_in_a_row += 1
            server.pauses += 1
            server.failures_in_a_row = 0
