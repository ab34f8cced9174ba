"""The HTTP teacher's limits on a simulated clock: minutes of greedy sending in milliseconds. No sliding 60-second
window ever holds more than the limit, sends are paced within the minute, and the limiter is not overly cautious."""

from __future__ import annotations

import json
import random
from pathlib import Path
from email.utils import format_datetime
from datetime import datetime, timedelta, UTC

import httpx
import pytest

from datagen.teachers.openai_teacher import _retry_after
from datagen.teachers.ratelimit import RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send_greedily(limiter: RateLimiter, clock: Clock, sizes: list[int]) -> list[tuple[float, int]]:
    sent = []
    for size in sizes:
        while (wait := limiter.wait_time(size)) > 0:
            clock.now += wait
        limiter.take(size)
        sent.append((clock.now, size))
    return sent


def max_in_window(sent: list[tuple[float, int]], window: float, weight: bool = False) -> float:
    """Most units in any half-open window (t - window, t] ending at a send (to the limiter's microsecond)."""
    best, i, total = 0.0, 0, 0.0
    for t, a in sent:
        total += a if weight else 1
        while sent[i][0] <= t - window + 1e-6:
            total -= sent[i][1] if weight else 1
            i += 1
        best = max(best, total)
    return best


def test_requests_per_minute_hold_in_every_sliding_minute_and_are_paced():
    clock = Clock()
    sent = send_greedily(RateLimiter(120, None, clock=clock), clock, [1] * 1500)
    assert max_in_window(sent, 60) <= 120
    assert max_in_window(sent, 1) <= 2 + 2  # one second's burst plus one second's refill, not 120 at once
    span = sent[-1][0] - sent[0][0]
    assert len(sent) / span >= 0.95 * 2  # close to the allowed 2 a second: not overly cautious


def test_tokens_per_minute_with_requests_of_every_size():
    clock = Clock()
    rng = random.Random(1)
    sizes = [rng.choice([5, 50, 200, 900, 2500]) for _ in range(600)]  # some far bigger than a second's worth
    sent = send_greedily(RateLimiter(None, 30_000, clock=clock), clock, sizes)
    assert max_in_window(sent, 60, weight=True) <= 30_000
    span = sent[-1][0] - sent[0][0]
    assert sum(sizes) / span * 60 >= 0.9 * 30_000


def test_both_limits_and_a_request_bigger_than_the_minute():
    clock = Clock()
    limiter = RateLimiter(30, 1000, clock=clock)
    sent = send_greedily(limiter, clock, [100, 5000, 100, 100] * 20)  # 5000 > the whole minute: goes alone
    assert max_in_window(sent, 60) <= 30
    for t, size in sent:
        if size == 5000:
            assert [s for u, s in sent if t - 60 < u <= t] == [5000]


def test_retry_after_pauses_every_request():
    clock = Clock()
    limiter = RateLimiter(None, None, clock=clock)
    assert limiter.wait_time(1) == 0
    limiter.pause(2.5)
    assert limiter.wait_time(1) == 2.5
    clock.now += 2.5
    assert limiter.wait_time(1) == 0


def test_retry_after_header_forms():
    def resp(value):
        return httpx.Response(429, headers={"retry-after": value} if value is not None else {})

    assert _retry_after(resp("3")) == 3.0
    assert _retry_after(resp("0.5")) == 0.5
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= _retry_after(resp(format_datetime(when, usegmt=True))) <= 31
    assert _retry_after(resp("soon")) is None and _retry_after(resp(None)) is None


class RateLimitedScript:
    """A server that answers at most `per_second` chat completions in any second and the rest with 429 and
    `Retry-After: 1`, as a provider's limit does."""

    def __init__(self, per_second: int | None):
        import threading

        self.per_second, self.lock, self.times, self.limited = per_second, threading.Lock(), [], 0

    def __call__(self, body: dict):
        import time

        with self.lock:
            now = time.monotonic()
            self.times = [t for t in self.times if t > now - 1.0]
            if self.per_second is None or len(self.times) >= self.per_second:
                self.limited += 1
                return {"status": 429, "body": {"error": {"message": "rate limited"}}, "headers": {"retry-after": "1"}}
            self.times.append(now)
        return "answer to " + body["messages"][-1]["content"]


def _limited_spec(tmp_path, base_url: str, n: int, extra: str = "") -> Path:
    import json

    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"q": f"question {i}"}) + "\n" for i in range(n)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: limited
teachers:
  t: {{backend: openai, base_url: "{base_url}", model: scripted, max_attempts: 2, max_concurrency: 32{extra}}}
sources:
  q: {{path: q.jsonl}}
steps:
  - {{name: answer, strategy: label, teacher: t, input: q, prompt: "{{{{ q }}}}", max_failure_rate: 1}}
""")
    return spec


def test_a_rate_limit_costs_time_never_a_row(tmp_path):
    """120 requests at max_concurrency 32 against 20 a second: many 429s, and every request still becomes a row
    (a 429 is not one of max_attempts)."""
    from datagen.api import run
    from tests.scripted_server import ScriptedServer

    script = RateLimitedScript(20)
    lines: list[str | None] = []

    def progress(step, done, total, tokens, pace=None):  # a callback that takes `pace` gets the achieved pace
        lines.append(pace)

    with ScriptedServer(script) as server:
        said: list[str] = []
        spec = _limited_spec(tmp_path, server.base_url, 120)
        summary = run(spec, log=said.append, progress=progress)
        calls = len(server.bodies)
    assert script.limited > 0  # the limit did bite
    # the achieved concurrency and rate: in the progress line while it runs, in the summary and in `_runs` after
    assert any(p and " in flight, " in p and p.endswith(" req/s") for p in lines)
    step = summary.steps[0]
    assert 12 <= step.requests_per_s <= 22 and 0 < step.concurrency <= 32 and step.rate_limited == script.limited
    import duckdb

    from datagen.spec.load import load_spec

    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    (stored,) = con.execute("SELECT summary FROM _runs").fetchone()
    con.close()
    stored = json.loads(stored)[0]
    assert (stored["concurrency"], stored["requests_per_s"], stored["rate_limited"]) == (
        step.concurrency, step.requests_per_s, step.rate_limited)
    assert (summary.steps[0].generated, summary.steps[0].failed) == (120, 0)
    assert script.limited / calls < 0.15  # the pace was learned: a few 429s, not half the calls (static: 54%)
    pace = summary.steps[0].pace
    assert "requests/s, learned from the server's 429s" in pace and f"teacher t: {pace}" in "\n".join(said)
    learned = float(pace.split("paced at ")[1].split()[0])
    assert 10 <= learned <= 26  # near the server's 20 a second


def test_the_learned_pace_stays_under_the_limit_and_recovers_from_a_low_first_guess():
    from datagen.teachers.ratelimit import AdaptiveRate

    rate, now, limit = AdaptiveRate(), 0.0, 20.0
    assert rate.wait_time(now) == 0  # nothing is held back before the first 429
    for _ in range(3):
        rate.success(now)
    rate.limited(now)  # the first 429 after only 3 successes: a low guess
    assert rate.rate == pytest.approx(3 * AdaptiveRate.START)
    sent, refused = [], 0
    while now < 60:
        now += rate.wait_time(now) or 1e-3
        rate.take(now)
        window = [t for t in sent if t > now - 1]
        if len(window) >= limit:
            refused += 1
            rate.limited(now)
        else:
            sent.append(now)
            rate.success(now)
    late = [t for t in sent if t > 30]
    assert len(late) / 30 >= 0.8 * limit  # recovered to near the limit
    assert refused / (len(sent) + refused) < 0.05


def test_the_window_starts_low_doubles_then_halves_on_congestion_and_latency():
    from datagen.teachers.ratelimit import ConcurrencyWindow

    clock = Clock()
    w = ConcurrencyWindow(32, clock=clock)
    assert w.allowed == 4
    for _ in range(12):
        w.success(0.1, 10)
    assert w.allowed == 16  # one more per success while slow-starting
    w.congested()
    assert w.allowed == 8 and not w.slow_start
    w.congested()  # a burst is one signal
    assert w.allowed == 8
    for _ in range(80):
        w.success(0.1, 10)
    assert 8 < w.allowed < 32  # then slowly
    clock.now += 2
    before = w.allowed
    for _ in range(20):
        w.success(1.0, 10)  # ten times slower per token: the server saturates
    assert w.cuts == 2 and w.allowed <= before / 2 + 3  # halved, then a little regrowth
    w2 = ConcurrencyWindow(2, clock=clock)
    assert w2.allowed == 2  # never over the ceiling


def test_a_rate_limit_that_never_lifts_fails_after_rate_limit_wait_s(tmp_path):
    import duckdb

    from datagen.api import run
    from datagen.spec.load import load_spec
    from tests.scripted_server import ScriptedServer

    with ScriptedServer(RateLimitedScript(None)) as server:
        spec = _limited_spec(tmp_path, server.base_url, 2, extra=", rate_limit_wait_s: 1.5")
        summary = run(spec, log=lambda m: None)
        calls = len(server.bodies)
    assert summary.steps[0].failed == 2 and calls >= 4  # asked again past max_attempts (2), for 1.5 s
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    errors = [e for (e,) in con.execute("SELECT error FROM requests").fetchall()]
    con.close()
    assert all(e.startswith("HTTP 429") and "still rate limited after 1.5 s (rate_limit_wait_s)" in e for e in errors)


def test_a_server_down_in_the_middle_of_a_run_costs_no_row(tmp_path):
    """The only server stops listening for 4 s mid-run (connections refused), then comes back on the same port:
    every request still becomes a row, and a short max_attempts never runs out (unreachable is not an attempt)."""
    import threading
    import time

    from datagen.api import run
    from tests.scripted_server import ScriptedServer, echo_script

    down = threading.Event()

    def slow(body):
        time.sleep(0.02)
        return {"drop": True} if down.is_set() else echo_script(body)  # kept-alive connections die too

    first = ScriptedServer(slow).__enter__()
    port = first.port
    spec = _limited_spec(tmp_path, first.base_url, 150)
    spec.write_text(spec.read_text().replace("max_attempts: 2, max_concurrency: 32", "max_attempts: 1, "
                                             "max_concurrency: 4, down_limit_s: 60"))
    later: list = []

    def outage():
        deadline = time.monotonic() + 60
        while len(first.bodies) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        down.set()
        first.__exit__(None, None, None)  # down: nothing listens on the port
        time.sleep(4)
        down.clear()
        later.append(ScriptedServer(slow, port=port).__enter__())

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        summary = run(spec, log=lambda m: None)
    finally:
        thread.join()
        for server in later:
            server.__exit__(None, None, None)
    assert (summary.steps[0].generated, summary.steps[0].failed) == (150, 0)
    assert len(first.bodies) >= 40 and len(later[0].bodies) >= 150 - len(first.bodies)  # both sides served


def test_the_meter_integrates_requests_in_flight_over_time():
    from datagen.teachers.ratelimit import Meter

    now = [0.0]
    m = Meter(clock=lambda: now[0])
    m.open()
    m.begin()
    m.begin()  # two in flight for 1 s ...
    now[0] = 1.0
    m.end(True)
    m.end(False, limited=True)
    now[0] = 2.0  # ... then none for 1 s
    busy, open_s, replies, limited = m.snapshot()
    assert (busy, open_s, replies, limited) == (2.0, 2.0, 1, 1)  # mean concurrency 1, 0.5 replies/s
    assert m.live() == "0 in flight, 0.1 req/s"  # one reply in the last 10 s
    m.close()
    now[0] = 5.0
    assert m.snapshot()[:2] == (2.0, 2.0)  # closed: time does not count
