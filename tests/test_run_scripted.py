"""The run loop against a scripted OpenAI-compatible teacher on 127.0.0.1: what is sent, what is stored, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from datagen.errors import RunFailed, UserError
from datagen.api import run
from datagen.spec.load import load_spec
from tests.scripted_server import ScriptedServer, messages_key

PROBLEMS = [
    {"question": f"What is {a} plus {b}?", "answer": f"#### {a + b}"} for a, b in
    [(2, 3), (4, 4), (10, 7), (6, 1), (9, 9), (12, 30)]
]


def make_spec(tmp_path: Path, base_url: str, extra_step: str = "", step_opts: str = "", prompt: str = "Q: {{ question }}",
              teacher_opts: str = "", name: str = "t") -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: {name}
seed: 11
teachers:
  t:
    backend: openai
    base_url: {base_url}
    model: scripted
    max_attempts: 2
    sampling: {{temperature: 0.5, max_tokens: 40, seed: 1}}
{teacher_opts}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: t
    input: problems
    system: You are terse.
    demos: {{from: problems, k: 2, as: turns, user: question, assistant: answer}}
    prompt: "{prompt}"
    n: 2
    output: solution
{step_opts}
{extra_step}
""")
    return spec


def store_rows(spec: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def quiet_run(spec: Path):
    return run(load_spec(spec), log=lambda m: None)


def test_rows_lineage_and_demos(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url)
        summary = quiet_run(spec)
        assert summary.steps[0].generated == 12 and summary.steps[0].failed == 0
        assert len(server.bodies) == 12
    rows = store_rows(spec, "select question, solution, _sample_index, _parent_id, _id from solve order by _id")
    assert len(rows) == 12 and len({r[4] for r in rows}) == 12
    assert sorted(r[2] for r in rows) == [0] * 6 + [1] * 6
    # the scripted teacher echoes the reversed prompt: the stored text is exactly its reply to this row's prompt
    for question, solution, *_ in rows:
        assert solution == "echo: " + f"Q: {question}"[::-1]
    # lineage: one input parent and two demos per row, demos never the input itself
    lineage = store_rows(spec, "select child_id, parent_id, role from lineage")
    by_child: dict = {}
    for child, parent, role in lineage:
        by_child.setdefault(child, []).append((parent, role))
    for *_, parent_id, rid in rows:
        roles = sorted(r for _, r in by_child[rid])
        assert roles == ["demo", "demo", "input"]
        assert parent_id not in [p for p, r in by_child[rid] if r == "demo"]
    # what was sent: system, 2 demo turns, the prompt; both samples of one input share one prompt
    for body in server.bodies:
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert body["temperature"] == 0.5 and body["max_tokens"] == 40
        user_q = body["messages"][-1]["content"][3:]
        assert user_q not in (body["messages"][1]["content"], body["messages"][3]["content"])
    prompts = [json.dumps(b["messages"]) for b in server.bodies]
    assert len(set(prompts)) == 6


def test_demos_reproducible_by_seed(tmp_path):
    with ScriptedServer() as server:
        a = make_spec(tmp_path / "a", server.base_url) if (tmp_path / "a").mkdir() is None else None
        quiet_run(a)
        first = sorted(json.dumps(b["messages"]) for b in server.bodies)
        server.reset()
        (tmp_path / "b").mkdir()
        b = make_spec(tmp_path / "b", server.base_url)
        quiet_run(b)
        assert sorted(json.dumps(x["messages"]) for x in server.bodies) == first
        server.reset()
        (tmp_path / "c").mkdir()
        c = make_spec(tmp_path / "c", server.base_url)
        c.write_text(c.read_text().replace("seed: 11", "seed: 12"))
        quiet_run(c)
        assert sorted(json.dumps(x["messages"]) for x in server.bodies) != first


def test_rerun_sends_nothing_and_raising_n_sends_only_new_samples(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url)
        quiet_run(spec)
        server.reset()
        summary = quiet_run(spec)
        assert server.bodies == [] and summary.steps[0].cached == 12 and summary.models_loaded == []
        spec.write_text(spec.read_text().replace("    n: 2", "    n: 3"))
        quiet_run(spec)
        assert len(server.bodies) == 6
        assert {b["seed"] for b in server.bodies} == {1 + 2}  # only sample index 2 was asked for
    assert store_rows(spec, "select count(*), count(distinct _id) from solve")[0] == (18, 18)


def test_changing_a_step_regenerates_it_and_its_dependents_only(tmp_path):
    second = """\
  - name: review
    strategy: label
    teacher: t
    input: solve
    prompt: "Review: {{ solution }}"
    output: verdict
"""
    third = """\
  - name: restate
    strategy: label
    teacher: t
    input: problems
    prompt: "Restate: {{ question }}"
    output: restated
"""
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url, extra_step=second + third)
        quiet_run(spec)
        assert len(server.bodies) == 12 + 12 + 6
        server.reset()
        spec.write_text(spec.read_text().replace("Review: {{ solution }}", "Check: {{ solution }}"))
        quiet_run(spec)
        assert len(server.bodies) == 12 and all("Check:" in b["messages"][-1]["content"] for b in server.bodies)
        server.reset()
        spec.write_text(spec.read_text().replace('"Q: {{ question }}"', '"Question: {{ question }}"'))
        quiet_run(spec)
        sent = [b["messages"][-1]["content"] for b in server.bodies]
        assert len(sent) == 24 and not any(s.startswith("Restate") for s in sent)
    # old rows stay in the store but leave the views
    assert store_rows(spec, "select count(*) from review")[0][0] == 12
    assert store_rows(spec, "select count(*) from outputs where step = 'review'")[0][0] == 36
    assert store_rows(spec, "select count(*) from review where verdict like 'echo: %'")[0][0] == 12


def test_failed_requests_are_recorded_and_retried_on_rerun(tmp_path):
    state = {"fail": True}

    def script(body):
        if state["fail"] and "10 plus 7" in body["messages"][-1]["content"]:
            return {"status": 500, "body": {"error": "teacher overloaded"}}
        if "6 plus 1" in body["messages"][-1]["content"]:
            return {"raw": '{"choices": [{"message": {"content": "cut off'}
        return "fine"

    with ScriptedServer(script) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts="    max_failure_rate: 0.9")
        summary = quiet_run(spec)
        assert summary.steps[0].failed == 4 and summary.steps[0].generated == 8
        failed = store_rows(spec, "select error, attempts from requests where status = 'failed' order by error")
        assert len(failed) == 4
        assert all("HTTP 500" in e or "malformed reply" in e for e, _ in failed)
        assert all("after 2 attempts" in e for e, _ in failed)
        assert store_rows(spec, "select count(*) from solve")[0][0] == 8
        state["fail"] = False
        server.reset()
        quiet_run(spec)
        # the 2 samples that got HTTP 500 now succeed; the 2 garbled ones are asked again and fail again
        assert len(server.bodies) == 2 * 1 + 2 * 2
    assert store_rows(spec, "select count(*) from solve")[0][0] == 10


def test_error_budget_stops_the_run(tmp_path):
    with ScriptedServer(lambda body: {"status": 400, "body": {"error": "bad request"}}) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts="    max_failure_rate: 0.1")
        with pytest.raises(RunFailed, match="max_failure_rate"):
            quiet_run(spec)
        out = subprocess.run([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 1 and "max_failure_rate" in out.stderr and "Traceback" not in out.stderr


def test_structured_output_parsed_into_columns(tmp_path):
    def script(body):
        content = body["messages"][-1]["content"]
        if "9 plus 9" in content:
            return "not json at all"
        if "12 plus 30" in content:
            return '{"total": "forty-two", "confidence": 0.5}'
        a, b = [int(w) for w in content.replace("?", "").split() if w.isdigit()]
        return json.dumps({"total": a + b, "confidence": 0.9})

    fmt = ("    response_format:\n      json_schema: {type: object, properties: {total: {type: integer}, "
           "confidence: {type: number}}, required: [total]}\n    max_failure_rate: 0.9")
    with ScriptedServer(script) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts=fmt)
        quiet_run(spec)
        sent = server.bodies[0]["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["schema"]["required"] == ["total"]
    rows = store_rows(spec, "select question, total, confidence, typeof(total) from solve")
    assert len(rows) == 8
    for question, answer, confidence, kind in rows:
        a, b = [int(w) for w in question.replace("?", "").split() if w.isdigit()]
        assert answer == a + b and confidence == 0.9 and kind == "BIGINT"
    errors = sorted(e for (e,) in store_rows(spec, "select error from requests where status = 'failed'"))
    assert len(errors) == 4
    assert sum("not valid JSON" in e for e in errors) == 2 and sum("does not match the schema" in e for e in errors) == 2


def test_truncated_reply_is_a_row_and_logprobs_are_stored(tmp_path):
    with ScriptedServer(lambda body: {"text": "one two three", "finish_reason": "length"}) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts="    logprobs: 3")
        quiet_run(spec)
        assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 3
    assert store_rows(spec, "select count(*) from solve where _finish_reason = 'length'")[0][0] == 12
    lp = store_rows(spec, "select row_id, position, token, len(top_tokens), top_logprobs[1] from logprobs "
                          "order by row_id, position")
    assert len(lp) == 12 * 3
    assert [t for _, _, t, _, _ in lp[:3]] == ["one", "two", "three"]
    assert all(n == 3 for *_, n, _ in lp) and all(abs(top - (-0.1)) <= 1 / 2048 for *_, top in lp)


def test_step_sampling_overrides_teacher(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url, step_opts="    sampling: {temperature: 0.0, top_p: 0.5}")
        quiet_run(spec)
        assert {(b["temperature"], b["top_p"], b["max_tokens"]) for b in server.bodies} == {(0.0, 0.5, 40)}


def test_api_key_comes_from_the_environment_and_is_never_stored(tmp_path, monkeypatch):
    secret = "sk-test-NEVER-STORE-7f3a9"
    seen = []

    with ScriptedServer() as server:
        original = server.script

        def script(body):
            seen.append(body)
            return original(body)

        server.script = script
        spec = make_spec(tmp_path, server.base_url, teacher_opts="    api_key_env: TEACHER_KEY_FOR_TEST")
        with pytest.raises(UserError, match="TEACHER_KEY_FOR_TEST is not set"):
            quiet_run(spec)
        monkeypatch.setenv("TEACHER_KEY_FOR_TEST", secret)
        quiet_run(spec)
    assert seen
    hits = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert hits == []


def test_query_is_read_only(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url)
        quiet_run(spec)
    cli = [sys.executable, "-m", "datagen.cli", "query", str(spec)]
    ok = subprocess.run(cli + ["select count(*) as n from solve", "--format", "json"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout) == [{"n": 12}]
    csv_out = subprocess.run(cli + ["select 1 as a, 'x' as b", "-f", "csv"], capture_output=True, text=True)
    assert csv_out.stdout.splitlines() == ["a,b", "1,x"]
    target = tmp_path / "stolen.csv"
    for sql in ["delete from requests", "insert into lineage values ('a', 'b', 'c')", "drop table requests",
                f"attach '{tmp_path / 'other.duckdb'}' as o", f"copy requests to '{target}'", "install httpfs",
                "load httpfs", "update requests set status = 'x'", "create table x as select 1",
                f"select * from read_csv('{tmp_path / 'problems.jsonl'}')", "set enable_external_access = true"]:
        out = subprocess.run(cli + [sql], capture_output=True, text=True)
        assert out.returncode == 2, (sql, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
    assert not target.exists()
    assert store_rows(spec, "select count(*) from requests")[0][0] == 12


def test_store_in_use_is_reported_with_the_pid(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url)
        quiet_run(spec)
    store = load_spec(spec).store_path
    holder = subprocess.Popen([sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(store)!r}); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["status", str(spec)], ["query", str(spec), "select 1"], ["run", "-q", str(spec)]):
            out = subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True,
                                 timeout=60)
            assert out.returncode == 2, out.stderr
            assert f"in use by process {holder.pid}" in out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    """Kill the whole process group of a real `datagen run` mid-run, re-run: every row once, no finished request
    sent twice (counted at the server)."""
    import os
    import signal

    problems = [{"question": f"What is {i} times {i + 1}?", "answer": f"#### {i * (i + 1)}"} for i in range(40)]

    def slow(body):
        time.sleep(0.1)
        return "answer " + body["messages"][-1]["content"]

    with ScriptedServer(slow) as server:
        spec = make_spec(tmp_path, server.base_url, teacher_opts="    max_concurrency: 2")
        (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
        cmd = [sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        # 50 replies take 2.5 s at 2 in flight: past the first commit (every 2 s), before the last (80 replies)
        while len(server.bodies) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done_before = store_rows(spec, "select messages, sample_index from requests where status = 'done'")
        assert 0 < len(done_before) < 80, "the kill should land mid-run"
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    rows = store_rows(spec, "select count(*), count(distinct _id), count(distinct (_parent_id, _sample_index)) "
                            "from solve")
    assert rows[0] == (80, 80, 80)
    assert store_rows(spec, "select count(*) from outputs")[0][0] == 80
    assert store_rows(spec, "select count(*) from lineage where role = 'input'")[0][0] == 80
    for messages, index in done_before:
        key = messages_key({"messages": json.loads(messages), "seed": 1 + index})
        assert server.counts[key] == 1, "a request finished before the kill was sent again"
