"""`kill -9` of a `datagen run` whose vLLM engine runs in processes of its own leaves no engine process behind.

datagen runs the engine core inside its own process by default, where a kill -9 takes it along. A user who sets
VLLM_ENABLE_V1_MULTIPROCESSING=1 (and tensor-parallel workers on a GPU) gets engine processes that, without the
watchdog (datagen/teachers/watchdog.py), survive their parent's SIGKILL holding the model's memory and busy cores;
this test runs that configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_kill_9_of_datagen_leaves_no_engine_process(tmp_path):
    lines = (ROOT / "specs" / "data" / "gsm8k_train_500.jsonl").read_text().splitlines()[:100]
    (tmp_path / "problems.jsonl").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("""\
name: orphans
teachers:
  small:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    sampling: {temperature: 0.8, max_tokens: 256}
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
""")
    log = tmp_path / "run.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    kids: list[psutil.Process] = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 240
        engine_seen = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            kids = parent.children(recursive=True)
            if engine_seen is None and any("EngineCore" in p.name() for p in kids if p.is_running()):
                engine_seen = time.monotonic()
            if engine_seen and time.monotonic() - engine_seen > 3:
                break  # the engine is up (loading or generating): the moment a user's kill -9 is most costly
            time.sleep(0.5)
        assert engine_seen, "the engine never started:\n" + log.read_text()[-3000:]
        kids = parent.children(recursive=True)
        names = sorted(p.name() for p in kids)
        assert any("EngineCore" in n for n in names), names
        engine = [p for p in kids if "EngineCore" in p.name()]
        assert engine[0].memory_info().rss > 200 * 2**20  # it holds real memory worth freeing
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while alive(kids) and time.monotonic() < deadline:
            time.sleep(0.25)
        left = [(p.pid, p.name()) for p in alive(kids)]
        assert left == [], f"processes outlived their killed parent: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in alive(kids):  # only if the test failed: do not leave the engine running on the machine
            p.kill()
