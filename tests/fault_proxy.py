"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an OpenAI-compatible server, for the reliability tests.

At `rate` (seeded, so runs repeat) a request meets a fault instead of a clean reply, the kinds in turn: a burst of 429s with
`Retry-After` (every request for `burst_s` seconds gets one), a 500, a reply slower than the client's timeout, a
dropped connection, or the upstream reply cut short (truncated JSON). Everything is counted at the proxy: arrival
times and sizes (to check rate limits over sliding windows), requests in flight (concurrency), faults by kind, clean
replies per prompt, and how long each prompt waited after a 429 before it came back.
"""

from __future__ import annotations

import hashlib
import json
import random
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

KINDS = ("429", "500", "slow", "drop", "truncate")


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).hexdigest()


def token_estimate(body: dict) -> int:
    """What the client charges a request against tokens_per_minute (see OpenAITeacher._sample)."""
    return body.get("max_tokens", 0) + sum(len(m["content"]) for m in body.get("messages", [])) // 4


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of 16 connections (a teacher's max_concurrency) overflows
    # it and the kernel resets some of them (clients see ReadError)
    request_queue_size = 256


class FaultProxy:
    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 0, slow_s: float = 2.0,
                 retry_after: int = 1, burst_s: float = 1.0, kinds: tuple[str, ...] = KINDS):
        self.upstream = upstream.rstrip("/")
        self.rate, self.slow_s, self.retry_after, self.burst_s, self.kinds = rate, slow_s, retry_after, burst_s, kinds
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, int]] = []  # (time, token estimate) of every POST
        self.faults: Counter = Counter()
        self.clean: Counter = Counter()  # body key -> clean 200 replies delivered
        self.replies: dict[str, str] = {}  # body key -> the text of its clean reply
        self.attempts: Counter = Counter()  # body key -> requests seen
        self.waits_after_429: list[tuple[float, float]] = []  # (seconds waited, Retry-After) per retried prompt
        self.last_429: dict[str, float] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.burst_until = 0.0
        self.turn = 0
        self.http = httpx.Client(timeout=300)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                resp = proxy.http.get(proxy.upstream + self.path.removeprefix("/v1"))
                self._send(resp.status_code, resp.content)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                body = json.loads(raw or b"{}")
                key = body_key(body)
                now = time.monotonic()
                with proxy.lock:
                    proxy.arrivals.append((now, token_estimate(body)))
                    proxy.attempts[key] += 1
                    if key in proxy.last_429:
                        proxy.waits_after_429.append((now - proxy.last_429.pop(key), proxy.retry_after))
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    if now < proxy.burst_until:
                        fault = "429"
                    elif proxy.rng.random() < proxy.rate:
                        fault = proxy.kinds[proxy.turn % len(proxy.kinds)]  # kinds in turn: each one shows up
                        proxy.turn += 1
                        if fault == "429":
                            proxy.burst_until = now + proxy.burst_s
                    else:
                        fault = None
                    if fault:
                        proxy.faults[fault] += 1
                    if fault == "429":
                        proxy.last_429[key] = now
                self._released = False
                try:
                    self._serve(fault, key, raw)
                finally:
                    self._release()

            def _release(self):
                """The request stops counting as in flight when answered or when the client gave up on it."""
                if not self._released:
                    self._released = True
                    with proxy.lock:
                        proxy.in_flight -= 1

            def _client_gone(self, seconds: float) -> bool:
                """Wait up to `seconds`; True as soon as the client closes the connection (it timed out)."""
                deadline = time.monotonic() + seconds
                while True:
                    left = deadline - time.monotonic()
                    readable, _, _ = select.select([self.connection], [], [], max(0.0, min(left, 0.05)))
                    if readable:
                        try:
                            gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                        except OSError:
                            gone = True
                        if gone:
                            self.close_connection = True
                            return True
                    if left <= 0:
                        return False

            def _serve(self, fault: str | None, key: str, raw: bytes):
                if fault == "429":
                    self._send(429, b'{"error": "rate limited"}', {"retry-after": str(proxy.retry_after)})
                elif fault == "500":
                    self._send(500, b'{"error": "internal error"}')
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault == "slow":
                    # held past the client's timeout; once it gives up, upstream never sees the request
                    if not self._client_gone(proxy.slow_s):
                        self._send(*self._forward(raw))
                else:
                    result: list = []
                    worker = threading.Thread(target=lambda: result.append(self._forward(raw)), daemon=True)
                    worker.start()
                    while worker.is_alive():
                        worker.join(0.05)
                        if worker.is_alive() and self._client_gone(0):
                            return  # the client timed out on a slow upstream: no longer in flight
                    status, data = result[0]
                    if fault == "truncate":
                        self._send(200, data[: len(data) * 3 // 5])
                        return
                    self._send(status, data)
                    if status == 200:
                        with proxy.lock:
                            proxy.clean[key] += 1
                            proxy.replies[key] = json.loads(data)["choices"][0]["message"]["content"]

            def _forward(self, raw: bytes) -> tuple[int, bytes]:
                auth = self.headers.get("authorization")
                resp = proxy.http.post(proxy.upstream + "/chat/completions", content=raw,
                                       headers={"content-type": "application/json",
                                                **({"authorization": auth} if auth else {})})
                return resp.status_code, resp.content

            def _send(self, status: int, data: bytes, headers: dict | None = None):
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    self._release()
                except OSError:  # the client gave up (timeout) and closed the connection
                    self.close_connection = True

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.http.close()

    def max_in_window(self, window_s: float, weight: bool = False) -> float:
        """The most requests (or estimated tokens) that arrived in any window [t, t + window_s) starting at an
        arrival: every window that matters, since the count only rises at arrivals."""
        times = sorted(self.arrivals)
        best, j, total = 0.0, 0, 0.0
        for i, (t, _) in enumerate(times):
            while j < len(times) and times[j][0] < t + window_s:
                total += times[j][1] if weight else 1
                j += 1
            best = max(best, total)
            total -= times[i][1] if weight else 1
        return best

    def summary(self) -> dict:
        return {"requests": len(self.arrivals), "faults": dict(self.faults), "faults_total": sum(self.faults.values()),
                "clean": sum(self.clean.values()), "max_in_flight": self.max_in_flight}
