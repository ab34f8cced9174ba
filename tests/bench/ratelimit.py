"""Hosted teachers under pressure, a static client (`adaptive_rate: false`, the baseline of this run) against the
adaptive one (the default), side by side. Run: .venv/bin/python tests/bench/ratelimit.py

1. A rate-limited provider: 400 requests at max_concurrency 32 against a scripted server that answers 20 a second
   and the rest with 429 + Retry-After: 1: rows made, share of calls that were 429s, the step's time against the
   server's floor (400 / 20 s).
2. A server that saturates without ever saying 429 (it works on 4 requests at a time in 0.1 s; more in flight only
   wait, so their latency climbs): 200 requests at max_concurrency 32: throughput, and the latency a request sees
   inside the server (median and 95th percentile).
3. A server that goes down for 30 s in the middle of a run (connections refused, then back on the same port): 300
   requests at 20 a second of work: rows made and failed at `max_attempts: 1`."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datagen.api import run  # noqa: E402
from tests.scripted_server import ScriptedServer  # noqa: E402
from tests.test_ratelimit import RateLimitedScript, _limited_spec  # noqa: E402

N, PER_SECOND = 400, 20


def measure(adaptive: bool) -> tuple[int, int, int, float]:
    script = RateLimitedScript(PER_SECOND)
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(script) as server:
        spec = _limited_spec(Path(tmp), server.base_url, N, f", adaptive_rate: {str(adaptive).lower()}")
        start = time.monotonic()
        summary = run(spec, log=lambda m: None)
        seconds = time.monotonic() - start
        calls = len(server.bodies)
    return summary.steps[0].generated, calls, script.limited, seconds


class Saturating:
    """At most CAPACITY requests are worked on at once, each for WORK_S; the rest queue (no 429)."""

    CAPACITY, WORK_S = 4, 0.1

    def __init__(self):
        import threading

        self.slots = threading.Semaphore(self.CAPACITY)
        self.lock = threading.Lock()
        self.latencies: list[float] = []

    def __call__(self, body: dict):
        start = time.monotonic()
        with self.slots:
            time.sleep(self.WORK_S)
        with self.lock:
            self.latencies.append(time.monotonic() - start)
        return "answer to " + body["messages"][-1]["content"]


def measure_saturating(adaptive: bool, n: int = 200) -> tuple[int, float, float, float]:
    script = Saturating()
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(script) as server:
        spec = _limited_spec(Path(tmp), server.base_url, n, f", adaptive_rate: {str(adaptive).lower()}")
        start = time.monotonic()
        summary = run(spec, log=lambda m: None)
        seconds = time.monotonic() - start
    lat = sorted(script.latencies)
    return summary.steps[0].generated, seconds, lat[len(lat) // 2], lat[int(len(lat) * 0.95)]


def measure_outage(n: int = 300, down_s: float = 30) -> tuple[int, int, float]:
    import threading

    down = threading.Event()

    def work(body):
        time.sleep(0.05)
        return {"drop": True} if down.is_set() else "answer to " + body["messages"][-1]["content"]

    first = ScriptedServer(work).__enter__()
    later = []

    def outage():
        while len(first.bodies) < 100:
            time.sleep(0.01)
        down.set()
        first.__exit__(None, None, None)
        time.sleep(down_s)
        down.clear()
        later.append(ScriptedServer(work, port=first.port).__enter__())

    with tempfile.TemporaryDirectory() as tmp:
        spec = _limited_spec(Path(tmp), first.base_url, n)
        spec.write_text(spec.read_text().replace("max_attempts: 2, max_concurrency: 32", "max_attempts: 1, "
                                                 "max_concurrency: 4"))
        thread = threading.Thread(target=outage)
        thread.start()
        start = time.monotonic()
        summary = run(spec, log=lambda m: None)
        seconds = time.monotonic() - start
        thread.join()
    for server in later:
        server.__exit__(None, None, None)
    return summary.steps[0].generated, summary.steps[0].failed, seconds


if __name__ == "__main__":
    floor = N / PER_SECOND
    print(f"{N} requests, max_concurrency 32, a server allowing {PER_SECOND}/s (floor {floor:.0f} s)")
    print(f"{'client':<10} {'rows':>5} {'calls':>6} {'429s':>6} {'share':>6} {'seconds':>8} {'x floor':>8}")
    for name, adaptive in (("static", False), ("adaptive", True)):
        rows, calls, limited, seconds = measure(adaptive)
        print(f"{name:<10} {rows:>5} {calls:>6} {limited:>6} {limited / calls:>6.0%} {seconds:>8.1f} "
              f"{seconds / floor:>8.2f}")
    print()
    floor = 200 * Saturating.WORK_S / Saturating.CAPACITY
    print(f"200 requests, max_concurrency 32, a server working on {Saturating.CAPACITY} at a time "
          f"({Saturating.WORK_S:g} s each; floor {floor:.0f} s), no 429s")
    print(f"{'client':<10} {'rows':>5} {'seconds':>8} {'x floor':>8} {'p50 latency':>12} {'p95 latency':>12}")
    for name, adaptive in (("static", False), ("adaptive", True)):
        rows, seconds, p50, p95 = measure_saturating(adaptive)
        print(f"{name:<10} {rows:>5} {seconds:>8.1f} {seconds / floor:>8.2f} {p50:>11.2f}s {p95:>11.2f}s")
    print()
    print("300 requests, the only server down for 30 s after the first 100 (connections refused), max_attempts 1")
    rows, failed, seconds = measure_outage()
    print(f"rows {rows} of 300, failed {failed}, {seconds:.1f} s")
