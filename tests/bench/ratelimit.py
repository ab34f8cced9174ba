"""A rate-limited provider: 400 requests at max_concurrency 32 against a scripted server that answers 20 a second and
the rest with 429 + Retry-After: 1. Prints rows made, share of calls that were 429s, and the step's time against the
server's floor (400 / 20 s), the baseline of this run. Run: .venv/bin/python tests/bench/ratelimit.py"""

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

if __name__ == "__main__":
    script = RateLimitedScript(PER_SECOND)
    with tempfile.TemporaryDirectory() as tmp, ScriptedServer(script) as server:
        spec = _limited_spec(Path(tmp), server.base_url, N)
        start = time.monotonic()
        summary = run(spec, log=lambda m: None)
        seconds = time.monotonic() - start
        calls = len(server.bodies)
    floor = N / PER_SECOND
    step = summary.steps[0]
    print(f"rows {step.generated} of {N}, failed {step.failed}")
    print(f"calls {calls}, 429s {script.limited} ({script.limited / calls:.0%} of calls)")
    print(f"run {seconds:.1f} s against the server's floor {floor:.0f} s: {seconds / floor:.2f}x")
