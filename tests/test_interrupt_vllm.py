"""Ctrl-C and SIGTERM, sent as a terminal and a service manager send them (to the whole process group), during an
in-process vLLM run of 160 prompts: the run exits 130 / 143 without an error message, keeps every sample that
finished, leaves no process behind, and the re-run generates only what is missing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

SPEC = """\
name: interrupt
teachers:
  small:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    sampling: {temperature: 0, max_tokens: 48}
    engine: {enforce_eager: true, max_model_len: 1024, kv_cache_gb: 1}
sources:
  problems: {path: problems.jsonl}
steps:
  - name: solve
    strategy: label
    teacher: small
    input: problems
    prompt: "{{ question }}"
    output: solution
"""


def store(spec: Path, sql: str) -> list[tuple]:
    import duckdb

    con = duckdb.connect(str(spec.parent / "runs" / "interrupt.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def interrupt(spec: Path, sig: int, after: int, log: Path) -> tuple[int, str, list[psutil.Process]]:
    """Start `datagen run`, wait until its progress line shows more than `after` samples committed, send `sig` to
    its process group; return the exit code, what it printed and the processes it had started."""
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", str(spec)], stdout=fh, stderr=fh,
                                start_new_session=True)  # its own process group, as a terminal's foreground job
    kids: list[psutil.Process] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            kids = psutil.Process(proc.pid).children(recursive=True) or kids
            done = [int(n) for n in re.findall(r"solve: (\d+)/160 samples", log.read_text())]
            if done and done[-1] > after:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no progress in 300 s:\n" + log.read_text()[-3000:])
        sent = time.monotonic()
        os.killpg(proc.pid, sig)
        code = proc.wait(timeout=60)
        assert time.monotonic() - sent < 20, "the run took more than 20 s to stop"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return code, log.read_text(), kids


def left_behind(kids: list[psutil.Process]) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in kids if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.25)
    return [f"{p.pid} {p.name()}" for p in kids if p.is_running()]


def test_sigint_then_sigterm_to_the_process_group_keep_finished_samples(tmp_path):
    lines = (ROOT / "specs" / "data" / "gsm8k_train_500.jsonl").read_text().splitlines()[:160]
    (tmp_path / "problems.jsonl").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)

    code, out, kids = interrupt(spec, signal.SIGINT, 0, tmp_path / "run1.log")
    assert code == 130, out[-3000:]
    assert "interrupted: finished work is kept" in out
    assert not re.search(r"internal error|Traceback|EngineDead|leaked", out), out[-3000:]
    assert left_behind(kids) == []
    first = store(spec, "select key from requests where status = 'done'")
    assert 0 < len(first) < 160

    code, out, kids = interrupt(spec, signal.SIGTERM, len(first), tmp_path / "run2.log")
    assert code == 143, out[-3000:]
    assert "terminated: finished work is kept" in out
    assert not re.search(r"internal error|Traceback|EngineDead|leaked", out), out[-3000:]
    assert left_behind(kids) == []
    second = store(spec, "select key from requests where status = 'done'")
    assert len(first) < len(second) < 160

    out = subprocess.run([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # every sample once, and none that had finished was generated again (attempts counts each recorded reply)
    assert store(spec, "select count(*), count(distinct _id) from solve") == [(160, 160)]
    assert store(spec, "select count(*) from requests where status = 'done' and attempts = 1") == [(160,)]
    assert re.search(rf"solve\s.*160\s.*{len(second)}\s.*{160 - len(second)}\s", out.stdout), out.stdout
