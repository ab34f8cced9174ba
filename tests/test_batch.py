"""Batch mode against a scripted Batch API on 127.0.0.1: a run end to end, splitting, resume after kill -9 without a
second batch, an expired batch sent again, a failed one, a cancelled one, a create whose reply was lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from datagen.pipeline.cost import usd
from datagen.publish.export import export
from datagen.publish.report import write_report
from datagen.spec.load import load_spec
from tests.batch_server import BatchServer
from tests.test_run_scripted import make_spec, quiet_run, store_rows

BATCH = """\
    price: {input: 2.0, output: 8.0}
    batch: {enabled: true, poll_seconds: 0.05%s}
"""


def batch_spec(tmp_path, server, extra: str = "", teacher_opts: str = "", step_opts: str = ""):
    return make_spec(tmp_path, server.base_url, teacher_opts=BATCH % extra + teacher_opts, step_opts=step_opts)


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def start_run(spec) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(cond, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def kill_9_while_waiting(server: BatchServer, spec, polls: int) -> None:
    """Start a real run, let it submit its batch and poll it `polls` times (held in progress), then kill -9 it."""
    server.hold = True
    proc = start_run(spec)
    wait_for(lambda: server.batches.get("batch_1", {}).get("polls", 0) >= polls)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    server.hold = False


def test_batch_run_end_to_end(tmp_path, monkeypatch):
    secret = "sk-batch-NEVER-STORE-41"
    monkeypatch.setenv("BATCH_KEY_FOR_TEST", secret)
    with BatchServer() as server:
        spec = batch_spec(tmp_path, server, teacher_opts="    api_key_env: BATCH_KEY_FOR_TEST\n")
        summary = quiet_run(spec)
        assert server.creations == 1 and server.uploads == 1
        assert set(server.auth) == {f"Bearer {secret}"}
        batch = server.batches["batch_1"]
        assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"
        lines = batch["lines"]
        assert len(lines) == 12 and {x["url"] for x in lines} == {"/v1/chat/completions"}
        assert {x["body"]["seed"] for x in lines} == {1, 2}  # sample i asks seed + i, as online
    assert summary.steps[0].generated == 12 and summary.steps[0].failed == 0
    rows = store_rows(spec, "select question, solution from solve")
    assert len(rows) == 12 and all(s == "echo: " + f"Q: {q}"[::-1] for q, s in rows)
    # cost from the usage each line reported, at half the price (batch_discount 0.5)
    costs = store_rows(spec, "select prompt_tokens, completion_tokens, cost_usd from requests")
    for p, c, cost in costs:
        assert cost == pytest.approx((p * 2.0 + c * 8.0) / 1e6 * 0.5)
    assert summary.steps[0].cost_usd == pytest.approx(sum(c for *_, c in costs))
    assert store_rows(spec, "select batch_id, status, requests from batches") == [("batch_1", "completed", 12)]
    assert store_rows(spec, "select distinct worker from requests") == [
        (f"{server.base_url} batch_1",)]
    total = usd(summary.steps[0].cost_usd)
    status = cli("status", str(spec))
    assert status.returncode == 0 and "open batch" not in status.stdout
    assert f"spent: {total} in all" in status.stdout and f"84 completion tokens, {total}" in status.stdout
    # the dataset card and the report show it per step and in all
    card = export(load_spec(spec), out=tmp_path / "out").card.read_text()
    assert "| cost (USD) |" in card and f"| {total} |" in card
    html = write_report(load_spec(spec), out=tmp_path / "report.html").read_text()
    assert "cost (USD)" in html and f"Cost in all: {total}" in html
    assert [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []


def test_batches_split_at_the_line_and_size_limits(tmp_path):
    with BatchServer() as server:
        spec = batch_spec(tmp_path, server, extra=", max_requests_per_batch: 5")
        quiet_run(spec)
        assert server.creations == 3 and [len(b["lines"]) for b in server.batches.values()] == [5, 5, 2]
    with BatchServer() as server:
        (tmp_path / "b").mkdir()
        spec = batch_spec(tmp_path / "b", server, extra=", max_file_mb: 0.002")  # about 2 lines of 700 bytes
        quiet_run(spec)
        sizes = [len(server.files[b["input_file_id"]]) for b in server.batches.values()]
        assert server.creations > 3 and max(sizes) <= 2000 and sum(len(b["lines"]) for b in
                                                                    server.batches.values()) == 12
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12


def test_kill_9_after_submission_then_rerun_polls_the_same_batch(tmp_path):
    with BatchServer() as server:
        spec = batch_spec(tmp_path, server)
        # a poll comes only after the batch id was recorded: killed while the run waits on the batch
        kill_9_while_waiting(server, spec, polls=2)
        assert store_rows(spec, "select batch_id, status from batches") == [("batch_1", "in_progress")]
        status = cli("status", str(spec))
        assert "open batch batch_1 (teacher t, step solve): in_progress, 12 requests out" in status.stdout
        quiet_run(spec)
        assert server.creations == 1 and server.uploads == 1
        assert len(server.ran) == 12 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12
    assert store_rows(spec, "select status from batches") == [("completed",)]


@pytest.mark.parametrize("created", [True, False])
def test_killed_between_upload_and_recording_the_batch_id(tmp_path, created):
    """The store has the input file but no batch id: the re-run looks the batch up by its input file and polls it
    (or, when the provider never made it, sends the requests in a new one)."""
    with BatchServer() as server:
        spec = batch_spec(tmp_path, server)
        kill_9_while_waiting(server, spec, polls=1)
        con = duckdb.connect(str(load_spec(spec).store_path))
        con.execute("UPDATE batches SET batch_id = NULL, status = 'submitting'")
        con.close()
        if not created:
            del server.batches["batch_1"]
        quiet_run(spec)
        assert server.creations == (1 if created else 2) and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12
    assert store_rows(spec, "select batch_id from batches") == [("batch_1" if created else "batch_2",)]


def test_expired_batch_sends_its_unanswered_requests_again(tmp_path):
    with BatchServer() as server:
        server.plans = [{"outcome": "expired", "finish": 5}]
        spec = batch_spec(tmp_path, server)
        summary = quiet_run(spec)
        assert server.creations == 2 and len(server.batches["batch_2"]["lines"]) == 7
        assert len(server.ran) == 12 and set(server.ran.values()) == {1}
    assert summary.steps[0].generated == 12
    assert store_rows(spec, "select batch_id, status from batches order by 1") == [("batch_1", "expired"),
                                                                                  ("batch_2", "completed")]


def test_expired_past_max_attempts_fails_with_the_reason_then_a_rerun_sends_them(tmp_path):
    with BatchServer() as server:
        server.plans = [{"outcome": "expired", "finish": 5}]
        spec = batch_spec(tmp_path, server, step_opts="    max_failure_rate: 0.9")
        spec.write_text(spec.read_text().replace("max_attempts: 2", "max_attempts: 1"))
        quiet_run(spec)
        errors = store_rows(spec, "select error from requests where status = 'failed'")
        assert len(errors) == 7 and {e for (e,) in errors} == {
            "batch batch_1 expired: its window ended before these requests ran (sent in 1 batches)"}
        assert server.creations == 1
        quiet_run(spec)
        assert server.creations == 2 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12


def test_failed_batch_and_refused_lines(tmp_path):
    def script(body):
        return {"status": 400, "body": {"error": "bad line"}} if "6 plus 1" in body["messages"][-1]["content"] \
            else "fine"

    with BatchServer(script) as server:
        server.plans = [{"outcome": "failed"}]
        spec = batch_spec(tmp_path, server, step_opts="    max_failure_rate: 0.9")
        quiet_run(spec)
        assert server.creations == 2  # the failed batch's requests went out again in a new one
    assert store_rows(spec, "select batch_id, status, error from batches order by 1") == [
        ("batch_1", "failed", "invalid_request: scripted validation failure"), ("batch_2", "completed", None)]
    failed = store_rows(spec, "select error from requests where status = 'failed'")
    assert len(failed) == 2 and all(e.startswith('HTTP 400: {"error": "bad line"}') for (e,) in failed)
    assert store_rows(spec, "select count(*) from solve")[0][0] == 10


def test_a_lost_create_reply_never_makes_a_second_batch(tmp_path):
    with BatchServer() as server:
        server.plans = [{"lose_create_reply": True}]
        spec = batch_spec(tmp_path, server)
        quiet_run(spec)
        assert server.creations == 1 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12


def test_interrupt_then_cancel_then_rerun_collects_and_resends(tmp_path):
    with BatchServer() as server:
        server.hold = True
        server.plans = [{"finish": 4}]  # 4 lines ran before the cancel took effect
        spec = batch_spec(tmp_path, server)
        proc = start_run(spec)
        wait_for(lambda: server.batches.get("batch_1", {}).get("polls", 0) >= 2)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
        out = cli("run", str(spec), "--cancel-batches")
        assert out.returncode == 0, out.stderr
        assert "batch batch_1 (teacher t): cancelling" in out.stdout
        assert server.batches["batch_1"]["status"] == "cancelling"
        assert "open batch batch_1" in cli("status", str(spec)).stdout
        server.hold = False
        quiet_run(spec)
        assert server.creations == 2 and len(server.batches["batch_2"]["lines"]) == 8
        assert len(server.ran) == 12 and set(server.ran.values()) == {1}
        assert "open batch" not in cli("status", str(spec)).stdout
    assert store_rows(spec, "select batch_id, status from batches order by 1") == [("batch_1", "cancelled"),
                                                                                  ("batch_2", "completed")]
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12


def test_batch_key_errors_name_the_key_and_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("""\
name: bad
teachers:
  t:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    batch: {enabled: true}
steps: [{name: s, strategy: label, teacher: t, input: x, prompt: hi}]
sources: {x: {inline: [{a: 1}]}}
""")
    out = cli("validate", str(spec))
    assert out.returncode == 2 and "teachers.t.batch: unknown key `batch`" in out.stderr
    assert "bad.yaml:6:5" in out.stderr
    spec.write_text(spec.read_text().replace("backend: vllm", "backend: openai\n    base_url: http://127.0.0.1:9/v1")
                    .replace("{enabled: true}", "{enabled: true, completion_window: 1d}"))
    out = cli("validate", str(spec))
    assert out.returncode == 2 and "teachers.t.batch.completion_window" in out.stderr and "24h" in out.stderr
    spec.write_text(spec.read_text().replace("completion_window: 1d", "completion_window: 2h")
                    .replace("base_url: http://127.0.0.1:9/v1", "base_url: [http://127.0.0.1:9/v1, http://127.0.0.1:8/v1]"))
    out = cli("validate", str(spec))
    assert out.returncode == 2 and "teachers.t" in out.stderr and "give one base_url" in out.stderr
