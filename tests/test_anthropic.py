"""`backend: anthropic` against a scripted Anthropic-shaped server on 127.0.0.1 (tests/anthropic_server.py): the
Messages API online (system prompt, stop sequences, thinking as the trace, usage and price, 429s and 529s that cost
no row, a 400 that is the request's own fault), the Message Batches API (end to end, kill -9 after submission, a lost
create reply, an expired batch), and the spec mistakes refused before a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.api import run
from datagen.errors import UserError
from datagen.spec.load import load_spec
from tests.anthropic_server import AnthropicServer, echo
from tests.test_batch import wait_for
from tests.test_run_scripted import PROBLEMS, store_rows

SECRET = "sk-ant-NEVER-STORE-93c1"


def spec_file(tmp_path: Path, base_url: str, teacher: str = "", step: str = "") -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: claude
teachers:
  c:
    backend: anthropic
    base_url: {base_url}
    model: claude-test
    api_key_env: ANTHROPIC_KEY_FOR_TEST
    max_attempts: 1
    price: {{input: 3.0, output: 15.0}}
    sampling: {{temperature: 0.5, max_tokens: 40, stop: ["\\n\\nQ:"]}}
{teacher}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: c
    input: problems
    system: You are terse.
    prompt: "Q: {{{{ question }}}}"
    output: solution
{step}
""")
    return spec


def quiet(spec: Path, **kw):
    return run(load_spec(spec), log=lambda m: None, **kw)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_KEY_FOR_TEST", SECRET)


def test_messages_api_request_reply_usage_and_price(tmp_path):
    with AnthropicServer() as server:
        spec = spec_file(tmp_path, server.base_url, step="    sampling: {top_p: 0.9, top_k: 20}")
        summary = quiet(spec)
        body = server.bodies[0]
        assert {h.get("x-api-key") for h in server.headers} == {SECRET}
        assert {h.get("anthropic-version") for h in server.headers} == {"2023-06-01"}
        assert not any("authorization" in {k.lower() for k in h} for h in server.headers)
    assert summary.steps[0].generated == 6 and summary.steps[0].failed == 0
    # the system message is the API's `system`, never a message; stop is stop_sequences; top_p sent below 1
    assert body["system"] == "You are terse." and [m["role"] for m in body["messages"]] == ["user"]
    assert body["model"] == "claude-test" and body["max_tokens"] == 40 and body["stop_sequences"] == ["\n\nQ:"]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.5, 0.9, 20)
    assert "seed" not in body and "thinking" not in body
    rows = store_rows(spec, "select question, solution, _finish_reason from solve")
    assert len(rows) == 6 and all(s == echo({"messages": [{"content": f"Q: {q}"}]}) and f == "stop"
                                  for q, s, f in rows)
    usage = store_rows(spec, "select messages, prompt_tokens, completion_tokens, cost_usd from requests")
    for messages, p, c, cost in usage:
        words = sum(len(m["content"].split()) for m in json.loads(messages))  # system + question
        assert p == words and c == 7  # "echo:" and the reversed prompt's 6 words
        assert cost == pytest.approx((p * 3.0 + c * 15.0) / 1e6)
    assert [f for f in tmp_path.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()] == []


def test_thinking_blocks_become_the_reasoning_trace(tmp_path):
    def script(body):
        return {"thinking": "Add the two numbers.", "text": "#### 5"}

    with AnthropicServer(script) as server:
        spec = spec_file(tmp_path, server.base_url, teacher="    thinking: {budget_tokens: 1024}",
                         step="    reasoning: true\n    sampling: {max_tokens: 2048}")
        spec.write_text(spec.read_text().replace("temperature: 0.5, ", ""))
        quiet(spec)
        body = server.bodies[0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["max_tokens"] == 2048
    assert "temperature" not in body and "top_k" not in body  # the API takes neither beside thinking
    rows = store_rows(spec, "select solution, solution_reasoning, _reasoning_closed from solve")
    assert rows == [("#### 5", "Add the two numbers.", True)] * 6


def test_429_and_529_cost_time_never_a_row(tmp_path):
    seen: dict[str, int] = {}

    def script(body):
        q = body["messages"][-1]["content"]
        seen[q] = seen.get(q, 0) + 1
        if seen[q] == 1:
            return {"status": 429, "headers": {"retry-after": "1"},
                    "body": {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}}
        if seen[q] == 2 and "plus 1" in q:
            return {"status": 529, "body": {"type": "error", "error": {"type": "overloaded_error",
                                                                      "message": "overloaded"}}}
        return echo(body)

    with AnthropicServer(script) as server:
        spec = spec_file(tmp_path, server.base_url)  # max_attempts: 1, and still no row lost
        summary = quiet(spec)
        calls = len(server.bodies)
    assert (summary.steps[0].generated, summary.steps[0].failed) == (6, 0)
    assert calls == 6 * 2 + 1 and seen["Q: What is 6 plus 1?"] == 3
    assert summary.steps[0].seconds >= 1.0  # Retry-After was waited out


def test_a_400_and_a_refusal_are_the_requests_fault_a_500_the_providers(tmp_path):
    def script(body):
        q = body["messages"][-1]["content"]
        if "4 plus 4" in q:  # a careless server that echoes the key back in its error
            return {"status": 400, "body": {"type": "error", "error": {
                "type": "invalid_request_error", "message": f"prompt is too long (key {SECRET})"}}}
        if "9 plus 9" in q:
            return {"status": 500}
        if "6 plus 1" in q:
            return {"text": "", "stop_reason": "refusal"}
        return echo(body)

    with AnthropicServer(script) as server:
        spec = spec_file(tmp_path, server.base_url, step="    max_failure_rate: 0.9")
        first = quiet(spec)
        assert first.steps[0].failed == 3
        kinds = dict(store_rows(spec, "select error_kind, count(*) from requests where status = 'failed' group by 1"))
        assert kinds == {"request": 2, "provider": 1}
        errors = [e for (e,) in store_rows(spec, "select error from requests where status = 'failed'")]
        assert any(e.startswith("HTTP 400") and "invalid_request_error" in e for e in errors)
        assert any(e.startswith("refused (stop_reason refusal)") for e in errors)
        assert all(SECRET not in e for e in errors) and any("[api key]" in e for e in errors)
        status = cli("status", str(spec)).stdout
        assert "solve: 3 done, 3 failed, 0 pending of 6" in status
        assert "  2 failed by their own fault, kept failed: `datagen run --retry-failed` asks again" in status
        assert "  1 failed by the provider's fault: the next `datagen run` asks again" in status
        assert "    1 x HTTP 500" in status and "    1 x refused (stop_reason refusal)" in status


def test_request_faults_wait_for_retry_failed(tmp_path):
    state = {"broken": True}

    def script(body):
        q = body["messages"][-1]["content"]
        if state["broken"] and "4 plus 4" in q:
            return {"status": 400, "body": {"type": "error", "error": {"type": "invalid_request_error",
                                                                      "message": "bad"}}}
        if state["broken"] and "9 plus 9" in q:
            return {"status": 500}
        return echo(body)

    with AnthropicServer(script) as server:
        spec = spec_file(tmp_path, server.base_url, step="    max_failure_rate: 0.5")
        assert quiet(spec).steps[0].failed == 2
        state["broken"] = False
        server.bodies.clear()
        again = quiet(spec)  # the provider's fault is asked again, the request's own is not
        assert [b["messages"][-1]["content"] for b in server.bodies] == ["Q: What is 9 plus 9?"]
        assert again.steps[0].kept_failed == 1 and again.steps[0].generated == 1
        server.bodies.clear()
        out = cli("run", "-q", "--retry-failed", str(spec))
        assert out.returncode == 0, out.stderr
        assert [b["messages"][-1]["content"] for b in server.bodies] == ["Q: What is 4 plus 4?"]
    assert store_rows(spec, "select count(*) from solve")[0][0] == 6
    assert store_rows(spec, "select count(*) from requests where status = 'failed'")[0][0] == 0


# --- Message Batches -----------------------------------------------------------------------------------------------

BATCH = "    batch: {enabled: true, poll_seconds: 0.05}"


def test_batch_run_end_to_end_at_the_batch_price(tmp_path):
    with AnthropicServer() as server:
        spec = spec_file(tmp_path, server.base_url, teacher=BATCH)
        summary = quiet(spec)
        assert server.creations == 1 and server.bodies == []  # nothing went to the online endpoint
        requests = server.batches["msgbatch_0001"]["requests"]
        assert {h.get("x-api-key") for h in server.headers} == {SECRET}
    assert summary.steps[0].generated == 6 and summary.steps[0].failed == 0
    keys = {k for (k,) in store_rows(spec, "select key from requests")}
    assert {r["custom_id"] for r in requests} == keys
    params = requests[0]["params"]  # the body the online teacher would send
    assert params["system"] == "You are terse." and params["stop_sequences"] == ["\n\nQ:"]
    assert params["max_tokens"] == 40 and params["model"] == "claude-test"
    rows = store_rows(spec, "select question, solution from solve")
    assert len(rows) == 6 and all(s == echo({"messages": [{"content": f"Q: {q}"}]}) for q, s in rows)
    for p, c, cost in store_rows(spec, "select prompt_tokens, completion_tokens, cost_usd from requests"):
        assert cost == pytest.approx((p * 3.0 + c * 15.0) / 1e6 * 0.5)  # batch_discount 0.5
    assert store_rows(spec, "select batch_id, status, requests from batches") == [("msgbatch_0001", "completed", 6)]
    assert store_rows(spec, "select distinct worker from requests") == [(f"{server.base_url} msgbatch_0001",)]
    assert [f for f in tmp_path.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()] == []


def test_kill_9_after_submission_then_rerun_polls_the_same_batch(tmp_path):
    with AnthropicServer() as server:
        spec = spec_file(tmp_path, server.base_url, teacher=BATCH)
        server.hold = True
        proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # a poll comes only after the batch id was recorded: killed while the run waits on the batch
        wait_for(lambda: server.batches.get("msgbatch_0001", {}).get("polls", 0) >= 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert store_rows(spec, "select batch_id, status from batches") == [("msgbatch_0001", "in_progress")]
        assert "open batch msgbatch_0001 (teacher c, step solve): in_progress, 6 requests out" in \
            cli("status", str(spec)).stdout
        server.hold = False
        quiet(spec)
        assert server.creations == 1 and len(server.ran) == 6 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 6
    assert store_rows(spec, "select status from batches") == [("completed",)]


def test_a_lost_create_reply_finds_the_batch_instead_of_making_another(tmp_path):
    with AnthropicServer() as server:
        server.plans = [{"lose_create_reply": True}]
        spec = spec_file(tmp_path, server.base_url, teacher=BATCH)
        quiet(spec)
        assert server.creations == 1 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 6
    assert store_rows(spec, "select batch_id from batches") == [("msgbatch_0001",)]


def test_an_expired_batch_sends_its_unanswered_requests_again_and_errored_lines_are_classed(tmp_path):
    def script(body):
        if "4 plus 4" in body["messages"][-1]["content"]:
            return {"status": 400, "body": {"error": {"type": "invalid_request_error", "message": "bad line"}}}
        if "9 plus 9" in body["messages"][-1]["content"]:
            return {"status": 500, "body": {"error": {"type": "overloaded_error", "message": "busy"}}}
        return echo(body)

    with AnthropicServer(script) as server:
        server.plans = [{"outcome": "expired", "finish": 2}]
        spec = spec_file(tmp_path, server.base_url, teacher=BATCH, step="    max_failure_rate: 0.9")
        spec.write_text(spec.read_text().replace("max_attempts: 1", "max_attempts: 2"))  # batches per request
        summary = quiet(spec)
        assert server.creations == 2 and len(server.batches["msgbatch_0002"]["requests"]) == 4
        assert len(server.ran) == 6 and set(server.ran.values()) == {1}
    assert summary.steps[0].generated == 4
    assert store_rows(spec, "select batch_id, status from batches order by 1") == [
        ("msgbatch_0001", "expired"), ("msgbatch_0002", "completed")]
    failed = sorted(store_rows(spec, "select error_kind, error from requests where status = 'failed'"))
    assert failed == [("provider", "overloaded_error: busy"), ("request", "invalid_request_error: bad line")]


def test_cancel_batches_then_a_rerun_collects_and_sends_the_rest(tmp_path):
    with AnthropicServer() as server:
        server.hold = True
        server.plans = [{"finish": 2}]  # 2 requests ran before the cancel took effect
        spec = spec_file(tmp_path, server.base_url, teacher=BATCH)
        spec.write_text(spec.read_text().replace("max_attempts: 1", "max_attempts: 2"))  # batches per request
        proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: server.batches.get("msgbatch_0001", {}).get("polls", 0) >= 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out = cli("run", str(spec), "--cancel-batches")
        assert out.returncode == 0 and "batch msgbatch_0001 (teacher c): cancelling" in out.stdout, out.stderr
        server.hold = False
        quiet(spec)
        assert server.creations == 2 and len(server.batches["msgbatch_0002"]["requests"]) == 4
        assert len(server.ran) == 6 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select batch_id, status from batches order by 1") == [
        ("msgbatch_0001", "cancelled"), ("msgbatch_0002", "completed")]
    assert store_rows(spec, "select count(*) from solve")[0][0] == 6


# --- the spec ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher, step, where, words", [
    ("", "    logprobs: 5", "steps.0.logprobs", "returns no log-probabilities"),
    ("", "    sampling: {seed: 3}", "steps.0.sampling.seed", "not supported by the anthropic backend"),
    ("", "    sampling: {temperature: 1.5}", "steps.0.sampling.temperature", "temperature in [0, 1]"),
    ("", "    response_format: {json_schema: {type: object, properties: {a: {type: integer}}}}",
     "steps.0.response_format", "structured output"),
    ("    thinking: {budget_tokens: 1024}", "", "steps.0", "set sampling.max_tokens above the budget"),
    ("    thinking: {budget_tokens: 1024}", "    sampling: {max_tokens: 4096, temperature: 0.2}", "steps.0.sampling",
     "temperature 1, no top_k"),
    ("    thinking: {budget_tokens: 100}", "", "teachers.c.thinking.budget_tokens", "1024"),
    ("    batch: {enabled: true, completion_window: 24h}", "", "teachers.c.batch", "completion_window"),
])
def test_what_the_api_cannot_do_is_refused_naming_the_key(tmp_path, teacher, step, where, words):
    import datagen

    spec = spec_file(tmp_path, "http://127.0.0.1:9/v1", teacher=teacher, step=step)
    spec.write_text(spec.read_text().replace("temperature: 0.5, ", ""))  # (the teacher's own would be refused first)
    with pytest.raises(UserError) as err:
        datagen.validate(spec)
    assert where in str(err.value) and words in str(err.value)


def test_a_key_variable_that_is_not_set_stops_the_run_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_KEY_FOR_TEST")
    spec = spec_file(tmp_path, "http://127.0.0.1:9/v1")
    out = cli("run", "-q", str(spec))
    assert out.returncode == 2 and "teachers.c.api_key_env: environment variable ANTHROPIC_KEY_FOR_TEST is not set" \
        in out.stderr
