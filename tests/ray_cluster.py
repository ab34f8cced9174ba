"""Scenarios on a local Ray cluster, run by tests/test_ray.py inside `unshare --net --pid --fork --mount-proc` (so the
cluster listens on loopback only and every process of it ends with the namespace). Prints one JSON line of results.

A: a 40-row label step on the bundled model with `replicas: 2` and semantic dedup of its solutions (embeddings by
   Ray Data actors), then the same run again.
B: a 160-row run in which one replica's process is killed (-9) while it generates.
C: an 80-row run whose driver is killed (-9): how long until Ray ends the replicas; then the run again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psutil

SPEC = """\
name: {name}
teachers:
  small:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    replicas: 2
    sampling: {{temperature: 0, max_tokens: {tokens}}}
    engine: {{enforce_eager: true, max_model_len: 1024, kv_cache_gb: 1}}
sources:
  problems: {{path: {name}.jsonl}}
steps:
  - {{name: solve, strategy: label, teacher: small, input: problems, prompt: "{{{{ question }}}}", output: solution}}
"""


CURATION = """\
curation:
  input: solve
  dedup:
    - {type: semantic, column: solution, threshold: 0.95}
"""


def spec(folder: Path, name: str, rows: list[str], tokens: int, extra: str = "") -> Path:
    (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, tokens=tokens) + extra)
    return path


def store(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path.parent / "runs" / f"{path.stem}.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def datagen(*args: str, log: Path | None = None) -> subprocess.Popen:
    out = log.open("w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", *args, "--ray", "auto"], stdout=out, stderr=out)


def replicas() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if "Replica" in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def wait_for_progress(proc: subprocess.Popen, log: Path, above: int) -> None:
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the run ended early:\n{log.read_text()[-3000:]}")
        done = [int(n) for n in re.findall(r"solve: (\d+)/\d+ samples", log.read_text())]
        if done and done[-1] > above:
            return
        time.sleep(0.2)
    raise SystemExit(f"no progress:\n{log.read_text()[-3000:]}")


def counts(path: Path) -> dict:
    rows, ids, distinct = store(path, "select count(*), count(distinct _id), count(distinct _parent_id) from solve")[0]
    return {"rows": rows, "ids": ids, "inputs": distinct,
            "outputs": store(path, "select count(*) from outputs")[0][0],
            "workers": dict(store(path, "select worker, count(*) from requests group by 1")),
            "attempts_over_1": store(path, "select count(*) from requests where attempts > 1")[0][0]}


def main(folder: Path, data: Path) -> None:
    lines = data.read_text().splitlines()
    results: dict = {}
    subprocess.run(["ray", "start", "--head", "--num-cpus", "2", "--disable-usage-stats", "--include-dashboard=false"],
                   check=True, capture_output=True)

    a = spec(folder, "a", lines[:40], 32, CURATION)
    start = time.monotonic()
    results["a_exit"] = datagen(str(a), log=folder / "a.log").wait()
    results["a_seconds"] = round(time.monotonic() - start, 1)
    results["a"] = counts(a)
    results["a_embeddings"] = store(a, "select count(*) from embeddings")[0][0]
    results["a_distinct_solutions"] = store(a, "select count(distinct solution) from solve")[0][0]
    results["a_embedded_on_ray"] = "on Ray)" in (folder / "a.log").read_text()
    start = time.monotonic()
    results["a_rerun_exit"] = datagen("-q", str(a), log=folder / "a2.log").wait()
    results["a_rerun_seconds"] = round(time.monotonic() - start, 1)
    results["a_rerun"] = counts(a)
    results["a_rerun_embeddings"] = store(a, "select count(*) from embeddings")[0][0]

    b = spec(folder, "b", lines[40:200], 64)
    proc = datagen(str(b), log=folder / "b.log")
    wait_for_progress(proc, folder / "b.log", 0)
    victim = replicas()[0]
    results["b_killed"] = victim.pid
    results["b_done_at_kill"] = int(re.findall(r"solve: (\d+)/\d+ samples", (folder / "b.log").read_text())[-1])
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    results["b_exit"] = proc.wait(timeout=900)
    results["b_seconds_after_kill"] = round(time.monotonic() - killed, 1)
    results["b"] = counts(b)

    c = spec(folder, "c", lines[200:280], 48)
    proc = datagen(str(c), log=folder / "c.log")
    wait_for_progress(proc, folder / "c.log", 0)
    before = replicas()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = time.monotonic()
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in before) and \
            time.monotonic() - killed < 120:
        time.sleep(0.25)
    results["c_replicas_gone_after"] = round(time.monotonic() - killed, 1)
    results["c_replicas_left"] = [p.pid for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    results["c_done_before"] = store(c, "select count(*) from requests where status = 'done'")[0][0]
    results["c_rerun_exit"] = datagen("-q", str(c), log=folder / "c2.log").wait()
    results["c"] = counts(c)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
