"""The example specs specs/self_instruct.yaml and specs/math_curate.yaml end to end through the real CLI on the real
engine (vLLM's OpenAI-compatible server on the bundled model, shared with the other e2e tests), with small targets.
The 135M model's text is not judged; the tests assert what the pipeline guarantees: targets and counts, a verdict
for every candidate, meta columns and coverage, votes, lineage through the chain."""

from __future__ import annotations

from pathlib import Path

import yaml

import duckdb

from datagen.spec.load import load_spec
from tests.test_e2e_vllm import datagen

SPECS = Path(__file__).resolve().parent.parent / "specs"


def query_json(spec: Path, sql: str) -> list[dict]:
    """Rows as dicts, read straight from the store (the CLI's `query` is tested elsewhere; this saves a process)."""
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def on_server(name: str, tmp_path: Path, server: str, edit) -> Path:
    """The example spec with its teacher pointed at the shared server and its sizes made small."""
    doc = yaml.safe_load((SPECS / name).read_text())
    for teacher in doc["teachers"].values():
        teacher.pop("engine", None)
        teacher.update(backend="openai", base_url=server, model="smollm2", max_concurrency=8)
    for source in doc.get("sources", {}).values():
        if "path" in source:
            source["path"] = str(SPECS / source["path"])
    edit(doc)
    spec = tmp_path / name
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return spec


def test_self_instruct_example(tmp_path, vllm_server):
    def small(doc):
        expand, answers = doc["steps"]
        expand.update(target=4, batch=4, max_rounds=2)
        expand["sampling"]["max_tokens"] = 32
        answers["sampling"] = {"max_tokens": 16}

    spec = on_server("self_instruct.yaml", tmp_path, vllm_server, small)
    out = datagen("run", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    tasks = query_json(spec, "select _id, instruction from new_tasks")
    asked = query_json(spec, "select count(*) as n, count(*) filter (where status = 'done') as done "
                             "from requests where step = 'new_tasks'")[0]
    verdicts = query_json(spec, "select row_id, kept, reason, duplicate_of from decisions where stage = 'new_tasks'")
    assert 1 <= len(tasks) <= 4 and asked["n"] <= 8
    # round 2 asks only for what round 1 did not bring; short of the target only after both rounds
    assert len(tasks) == 4 or f"stopped after max_rounds (2) with {len(tasks)} of 4" in out.stderr
    assert len(verdicts) == asked["done"] and sum(v["kept"] for v in verdicts) == len(tasks)
    known = {r["_id"] for r in query_json(spec, "select _id from seed_tasks")} | {t["_id"] for t in tasks}
    for v in verdicts:
        assert v["reason"] and (v["kept"] or v["reason"].startswith(("empty", "truncated")) or
                                v["duplicate_of"] in known)
    # the chain: every answer's parent is an accepted task, whose demos are seed tasks (or accepted tasks)
    chain = query_json(spec, "select a._parent_id as task, l.parent_id as demo from answers a "
                             "join lineage l on l.child_id = a._parent_id and l.role = 'demo'")
    assert {c["task"] for c in chain} == {t["_id"] for t in tasks}
    assert len(chain) == 6 * len(tasks) and all(c["demo"] in known for c in chain)
    status = datagen("status", str(spec))
    assert f"accepted {len(tasks)} of target 4" in status.stdout


def test_math_curate_example(tmp_path, vllm_server):
    def small(doc):
        problems, solutions = doc["steps"]
        problems.update(count=3)
        problems["sampling"] = {"max_tokens": 40}
        solutions["sampling"] = {"max_tokens": 48}

    spec = on_server("math_curate.yaml", tmp_path, vllm_server, small)
    out = datagen("run", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    problems = query_json(spec, "select topic, difficulty, persona, question, _parent_id from problems")
    combos = query_json(spec, "select * from _meta_problems")
    assert len(combos) == 3 and len(problems) == 3
    assert {p["_parent_id"] for p in problems} == {c["_id"] for c in combos}
    assert all(p["difficulty"] in ("easy", "medium", "hard") and p["persona"] in ("a baker", "a pilot", "a student")
               and p["question"] for p in problems)
    every = query_json(spec, "select d.kept, d.score from decisions d join outputs o on o._id = d.row_id "
                             "where d.stage = 'solutions'")
    assert len(every) == 9 and all(0 <= v["score"] <= 1 for v in every)  # 3 problems x n = 3, each with a verdict
    kept = query_json(spec, "select _parent_id, agreement from solutions")
    assert len(kept) == sum(v["kept"] for v in every) and len({k["_parent_id"] for k in kept}) == len(kept) <= 3
    assert all(k["agreement"] >= 1 / 3 for k in kept)
    status = datagen("status", str(spec))
    assert status.returncode == 0 and "3 of 54 combinations requested" in status.stdout
    assert "difficulty: easy" in status.stdout and "persona: a baker" in status.stdout


def test_multiturn_example(tmp_path, vllm_server):
    """The bundled model in both roles: two exchanges per topic, roles alternating, every turn stored, and a re-run
    sends nothing (the turns' keys are the conversation so far)."""
    import json

    def small(doc):
        doc["teachers"]["t"]["sampling"]["max_tokens"] = 24
        doc["sources"]["topics"]["inline"] = doc["sources"]["topics"]["inline"][:2]

    spec = on_server("multiturn.yaml", tmp_path, vllm_server, small)
    out = datagen("run", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    talks = query_json(spec, "select topic, dialogue, dialogue_turns from talk")
    turns = query_json(spec, "select count(*) as n, count(*) filter (where status = 'done') as done "
                             "from requests where step = 'talk'")[0]
    assert len(talks) == 2 and turns["n"] <= 2 * 4
    for t in talks:
        dialogue = json.loads(t["dialogue"]) if isinstance(t["dialogue"], str) else t["dialogue"]
        roles = [m["role"] for m in dialogue]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and 1 <= t["dialogue_turns"] <= 2
    again = datagen("run", str(spec))
    assert again.returncode == 0 and query_json(spec, "select count(*) as n from requests where step = 'talk'")[0] \
        == {"n": turns["n"]}


def served(server: str) -> int:
    """Requests the vLLM server has finished so far (its Prometheus counter, over every finish reason)."""
    import httpx

    text = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total")))


def test_multiturn_kill_9_then_rerun_sends_only_what_was_not_done(tmp_path, vllm_server):
    """The bundled model on the real server: a run killed with -9 mid-conversation, re-run, asks the server only
    for the turns not committed (counted by the server itself) and finishes every conversation, roles alternating."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    def many(doc):
        doc["teachers"]["t"]["sampling"]["max_tokens"] = 16
        doc["teachers"]["t"]["max_concurrency"] = 2
        doc["sources"]["topics"]["inline"] = [{"topic": f"topic number {i}", "persona": "a student"}
                                              for i in range(10)]

    spec = on_server("multiturn.yaml", tmp_path, vllm_server, many)
    start = served(vllm_server)
    proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while served(vllm_server) - start < 14 and time.monotonic() < deadline:  # into the second of four rounds
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # what the killed run had in flight is aborted by the server
    left = query_json(spec, "select count(*) filter (where status <> 'done') as todo, count(*) as n "
                            "from requests where step = 'talk'")[0]
    assert proc.returncode == -signal.SIGKILL and left["n"] < 10 * 4  # it stopped part way
    before = served(vllm_server)
    out = datagen("run", "-q", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    total = query_json(spec, "select count(*) as n from requests where step = 'talk'")[0]["n"]
    sent = served(vllm_server) - before
    assert sent == left["todo"] + (total - left["n"])  # the unfinished turns and the new ones, nothing done again
    talks = query_json(spec, "select dialogue from talk")
    assert len(talks) == 10
    for t in talks:
        dialogue = json.loads(t["dialogue"]) if isinstance(t["dialogue"], str) else t["dialogue"]
        assert [m["role"] for m in dialogue] == ["user", "assistant"] * (len(dialogue) // 2)
