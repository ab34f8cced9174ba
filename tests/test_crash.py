"""Crash safety against one long-lived scripted teacher server: `kill -9` at random moments of real `datagen run`
processes, then Ctrl-C (SIGINT) mid-run, each followed by a resume. Counted at the server: no request that had
finished (was stored done) is ever sent again, and the store ends with exactly the expected rows."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from tests.scripted_server import ScriptedServer, messages_key

CLI = [sys.executable, "-m", "datagen.cli"]


def write_spec(tmp_path: Path, base_url: str, questions: list[str], n: int, concurrency: int) -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: crash
teachers:
  t:
    backend: openai
    base_url: {base_url}
    model: scripted
    max_concurrency: {concurrency}
    max_attempts: 2
    sampling: {{temperature: 0.7, max_tokens: 20, seed: 1}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: t
    input: problems
    prompt: "Q: {{{{ question }}}}"
    n: {n}
    output: solution
""")
    return spec


def store(spec: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(spec.parent / "runs" / "crash.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def has_store(spec: Path) -> bool:
    """False when the run was killed before it created the store's tables (the file alone may exist by then)."""
    if not (spec.parent / "runs" / "crash.duckdb").exists():
        return False
    return store(spec, "select count(*) from information_schema.tables where table_name = 'requests'")[0][0] == 1


def done_keys(spec: Path) -> set[str]:
    """Server-side keys (messages + per-sample seed) of the requests the store holds as done."""
    if not has_store(spec):
        return set()
    rows = store(spec, "select messages, sample_index from requests where status = 'done'")
    return {messages_key({"messages": json.loads(m), "seed": 1 + i}) for m, i in rows}


def check_consistent(spec: Path) -> int:
    """No duplicates, every done request has exactly one row with its lineage, nothing else."""
    if not has_store(spec):
        return 0
    (n_done,) = store(spec, "select count(*) from requests where status = 'done'")[0]
    if store(spec, "select count(*) from information_schema.tables where table_name = 'solve'")[0][0] == 0:
        assert n_done == 0  # killed before the step's view was made: nothing can have been generated yet
        return 0
    assert store(spec, "select count(*), count(distinct _id), count(distinct (_parent_id, _sample_index)) "
                       "from solve")[0] == (n_done, n_done, n_done)
    assert store(spec, "select count(*) from outputs")[0][0] == n_done
    assert store(spec, "select count(*), count(distinct child_id) from lineage")[0] == (n_done, n_done)
    assert store(spec, "select count(*) from outputs o anti join requests r on r.key = o.key "
                       "and r.status = 'done'")[0][0] == 0
    return n_done


def test_kill_9_at_random_moments_then_resume(tmp_path):
    questions = [f"What is {i} times {i + 1}?" for i in range(200)]
    total = 2 * len(questions)
    rng = random.Random(8)

    def script(body):
        time.sleep(0.02)
        return "answer " + body["messages"][-1]["content"]

    with ScriptedServer(script) as server:
        spec = write_spec(tmp_path, server.base_url, questions, n=2, concurrency=4)
        cmd = CLI + ["run", "-q", str(spec)]
        first_seen_done: dict[str, int] = {}  # key -> server count when the store first held it done
        crashes = mid_generation = attempts = 0
        while crashes < 10 and attempts < 20:
            attempts += 1
            before = len(server.bodies)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if rng.random() < 0.25:  # anywhere: during start-up, planning, the first batch
                time.sleep(rng.uniform(0.2, 2.0))
            else:  # mid-generation: after a random number of new requests, at a random instant
                start, want = len(server.bodies), rng.randint(1, 60)
                deadline = time.monotonic() + 30
                while len(server.bodies) < start + want and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                time.sleep(rng.uniform(0, 0.05))
            proc.kill()
            proc.wait()
            n_done = check_consistent(spec)
            if proc.returncode == -signal.SIGKILL and n_done < total:
                crashes += 1
                mid_generation += len(server.bodies) > before
            with server.lock:
                counts = dict(server.counts)
            for key in done_keys(spec):
                first_seen_done.setdefault(key, counts[key])
        assert crashes >= 10, f"only {crashes} kills landed before the run had finished"
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert check_consistent(spec) == total
        assert store(spec, "select count(*) from requests where status <> 'done'")[0][0] == 0
        # the server saw every request, and none that was stored done was ever sent again
        # (a client killed between a request's headers and its body leaves an empty body at the server)
        sent = {k: c for k, c in server.counts.items() if k != messages_key({})}
        assert len(sent) == total and set(sent) == done_keys(spec)
        resent = {k: (sent[k], c) for k, c in first_seen_done.items() if sent[k] != c}
        assert resent == {}
        assert mid_generation >= 6
        print(f"kill -9: {crashes} crashes survived ({mid_generation} mid-generation) in {attempts} runs; "
              f"{sum(sent.values())} requests for {total} samples ({sum(sent.values()) - total} redone from batches "
              "in flight at a kill)")


def test_sigint_cancels_in_flight_keeps_finished_and_resumes(tmp_path):
    questions = [f"What is {i} plus {i}?" for i in range(40)]
    hang = threading.Event()
    hang.set()
    finished: dict[str, float] = {}  # server key -> when its reply went out

    def script(body):
        content = body["messages"][-1]["content"]
        index = int(content.split()[3])
        if index % 5 == 4 and hang.is_set():
            time.sleep(30)  # in flight when Ctrl-C comes; must be cancelled, not waited for
        else:
            time.sleep(0.05)
        finished[messages_key(body)] = time.monotonic()
        return "answer " + content

    with ScriptedServer(script) as server:
        spec = write_spec(tmp_path, server.base_url, questions, n=1, concurrency=8)
        cmd = CLI + ["run", "-q", str(spec)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(finished) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(finished) >= 10
        # while the run holds the store, a second run, `status` and `query` say who holds it and exit 2
        for args in (["run", "-q", str(spec)], ["status", str(spec)], ["query", str(spec), "select 1"]):
            other = subprocess.run(CLI + args, capture_output=True, text=True, timeout=60)
            assert other.returncode == 2 and f"in use by process {proc.pid}" in other.stderr, other.stderr
            assert "Traceback" not in other.stderr
        time.sleep(0.5)
        cutoff = time.monotonic() - 0.3  # replies sent before this have surely been read by the client
        kept = {k for k, t in finished.items() if t < cutoff}
        in_flight = len(server.bodies) - len(finished)
        assert in_flight >= 4, "some requests should be hanging when Ctrl-C comes"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - sent < 10, "Ctrl-C waited for the hanging requests instead of cancelling them"
        assert proc.returncode == 130, err
        assert "interrupted" in err and "Traceback" not in err
        assert kept <= done_keys(spec), "a reply that had arrived before Ctrl-C was not kept"
        assert store(spec, "select count(*) from requests where status = 'failed'")[0][0] == 0
        assert store(spec, "select status from _runs")[0][0] == "interrupted"
        check_consistent(spec)
        done_before = done_keys(spec)
        counts_before = dict(server.counts)
        hang.clear()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    assert check_consistent(spec) == 40
    assert all(server.counts[k] == counts_before[k] for k in done_before), "a kept reply was asked again"
    assert [s for (s,) in store(spec, "select status from _runs order by started_at")] == ["interrupted", "done"]


def test_sigint_that_lands_on_another_thread_still_cancels_at_once(tmp_path):
    """The OS may hand SIGINT to any thread of the process (DuckDB's, the resolver's). With every request in flight
    hanging, the event loop must still wake and cancel them, not sleep until a reply comes."""
    import ctypes
    import platform

    tgkill = {"x86_64": 234, "aarch64": 131}[platform.machine()]  # the syscall number; signal one chosen thread
    questions = [f"What is {i} plus {i}?" for i in range(16)]
    replied: list[int] = []

    def script(body):
        index = int(body["messages"][-1]["content"].split()[3])
        time.sleep(60 if index >= 4 else 0.01)  # 4 quick replies, then only hanging requests
        replied.append(index)
        return "answer"

    with ScriptedServer(script) as server:
        spec = write_spec(tmp_path, server.base_url, questions, n=1, concurrency=8)
        proc = subprocess.Popen(CLI + ["run", "-q", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while (len(replied) < 4 or len(server.bodies) < 8) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the loop is now asleep in its selector, waiting on 8 hanging requests
        others = sorted(int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid)
        assert others, "the run should have more than one thread"
        sent = time.monotonic()
        assert ctypes.CDLL(None, use_errno=True).syscall(tgkill, proc.pid, others[-1], signal.SIGINT) == 0
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert time.monotonic() - sent < 10, "Ctrl-C on another thread waited for a reply instead of cancelling"
        assert proc.returncode == 130 and "interrupted" in err, err
    assert store(spec, "select count(*) from requests where status = 'done'")[0][0] == 4


def test_a_signal_during_a_duckdb_query_is_still_an_interrupt():
    """DuckDB drops the KeyboardInterrupt a SIGINT raises while a query runs and raises RuntimeError("Query
    interrupted"): the run loop and the CLI must still see Ctrl-C (exit 130), not an internal error (exit 1)."""
    from datagen.errors import as_interrupt

    con = duckdb.connect()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(Exception) as caught:
            con.execute("SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3").fetchall()
    finally:
        timer.cancel()
    interrupt = as_interrupt(caught.value)
    assert type(interrupt) is KeyboardInterrupt, caught.value
    assert as_interrupt(RuntimeError("something else")) is None
    assert as_interrupt(ValueError("Query interrupted")) is None
