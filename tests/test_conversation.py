"""`strategy: conversation` against a scripted teacher on 127.0.0.1 that plays both the assistant and the simulated
user, so every turn's content is known: roles alternate, each side sees the other's messages, a simulated user ends a
conversation with [END], a re-run sends no finished turn again, and the export is the whole conversation."""

from __future__ import annotations

import json

import duckdb
import pytest

import datagen
from datagen.strategies.conversation import BEGIN, STOP
from tests.scripted_server import ScriptedServer, messages_key

TOPICS = ["tides", "volcanoes", "bees"]

SPEC = """\
name: chat
teachers:
  t: {{backend: openai, base_url: "{base}", model: scripted, max_attempts: 1}}
sources:
  topics: {{path: topics.jsonl}}
steps:
  - name: talk
    strategy: conversation
    teacher: t
    input: topics
    system: "You are a patient tutor."
    user_prompt: "You are a curious student asking about {{{{ topic }}}}."
    turns: 3
    max_failure_rate: 1
    output: dialogue
"""


def is_user_side(body: dict) -> bool:
    return body["messages"][0]["role"] == "system" and STOP in body["messages"][0]["content"]


def script(body: dict, fail: set | None = None) -> str | dict:
    """The simulated user asks question k about its topic (and ends `bees` after its first answer); the assistant
    answers the last thing it was asked. `fail`: assistant turns (topic, k) that get a 500."""
    msgs = body["messages"]
    if is_user_side(body):
        topic = msgs[0]["content"].split("asking about ")[1].split(".")[0]
        k = sum(m["role"] == "assistant" for m in msgs) + 1  # the simulator's own earlier messages are `assistant`
        if topic == "bees" and k == 2:
            return STOP
        return f"question {k} about {topic}"
    asked = msgs[-1]["content"]
    topic, k = asked.split(" about ")[1], int(asked.split()[1])
    if fail and (topic, k) in fail:
        return {"status": 500, "body": {"error": {"message": "scripted outage"}}}
    return f"answer {k} about {topic}"


def write(tmp_path, base: str):
    (tmp_path / "topics.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in TOPICS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(base=base))
    return spec


def rows(spec) -> list[tuple]:
    loaded = datagen.open_spec(spec)
    con = duckdb.connect(str(loaded.store_path), read_only=True)
    try:
        return con.execute("SELECT topic, dialogue, dialogue_turns FROM talk ORDER BY topic").fetchall()
    finally:
        con.close()


def test_turns_alternate_each_side_sees_the_other_and_a_user_can_end_it(tmp_path):
    with ScriptedServer(script) as server:
        spec = write(tmp_path, server.base_url)
        summary = datagen.run(spec, log=lambda m: None)
        bodies = list(server.bodies)
        datagen.run(spec, log=lambda m: None)
        assert len(server.bodies) == len(bodies)  # a finished spec re-runs without sending a turn
    # tides and volcanoes: 3 user + 3 assistant turns; bees: 1 + 1, then the simulator's [END]
    assert summary.steps[0].generated == 3 + 3 + 3 + 3 + 1 + 1 + 1
    got = rows(spec)
    assert [r[0] for r in got] == ["bees", "tides", "volcanoes"] and [r[2] for r in got] == [1, 3, 3]
    tides = json.loads(got[1][1])
    assert [m["role"] for m in tides] == ["user", "assistant"] * 3
    assert [m["content"] for m in tides] == [f"{kind} {k} about tides" for k in (1, 2, 3)
                                             for kind in ("question", "answer")]
    # the assistant saw its system prompt and the conversation so far; the simulator its own side, roles swapped
    last = next(b for b in bodies if not is_user_side(b) and b["messages"][-1]["content"] == "question 3 about tides")
    assert last["messages"][0] == {"role": "system", "content": "You are a patient tutor."}
    assert last["messages"][1:] == [{"role": m["role"], "content": m["content"]} for m in tides[:-1]]
    side = next(b for b in bodies if is_user_side(b) and "tides" in b["messages"][0]["content"]
                and len(b["messages"]) == 6)
    assert side["messages"][1] == {"role": "user", "content": BEGIN}
    assert [m["role"] for m in side["messages"][2:]] == ["assistant", "user", "assistant", "user"]
    assert side["messages"][3]["content"] == "answer 1 about tides"

    loaded = datagen.open_spec(spec)
    con = duckdb.connect(str(loaded.store_path), read_only=True)
    try:
        dropped = con.execute("SELECT count(*) FROM decisions WHERE stage = 'talk' AND NOT kept").fetchone()[0]
        chained = con.execute("SELECT count(*) FROM lineage WHERE role = 'previous_turn'").fetchone()[0]
    finally:
        con.close()
    assert dropped == 15 - 3  # every turn but each conversation's last assistant one
    lines = datagen.status(spec)["steps"][0]["lines"]
    assert lines == ["    3 conversations, 2.3 exchanges on average (at most 3 of 3); each is its last assistant "
                     "turn's row, the earlier turns are in `decisions`"]
    assert chained == 15 - 3  # every turn but the first of each conversation names the one before

    import datasets

    out = datagen.export(spec)
    train = datasets.load_dataset(str(out.path))["train"]
    by_first = {r["messages"][1]["content"]: r["messages"] for r in train}
    assert by_first["question 1 about tides"][0] == {"role": "system", "content": "You are a patient tutor."}
    assert [m["role"] for m in by_first["question 1 about tides"]] == ["system"] + ["user", "assistant"] * 3


def test_a_failed_turn_ends_its_conversation_and_a_re_run_goes_on_without_resending(tmp_path):
    with ScriptedServer(lambda b: script(b, fail={("volcanoes", 2)})) as server:
        spec = write(tmp_path, server.base_url)
        first = datagen.run(spec, log=lambda m: None)
        assert first.steps[0].failed == 1
        got = rows(spec)
        assert dict((r[0], r[2]) for r in got) == {"bees": 1, "tides": 3, "volcanoes": 1}  # kept at its last turn
        failed = [b for b in server.bodies if b["messages"][-1]["content"] == "question 2 about volcanoes"]
        sent = {messages_key(b) for b in server.bodies} - {messages_key(b) for b in failed}
        server.script = script  # the outage is over
        server.reset()
        datagen.run(spec, log=lambda m: None)
        again = [messages_key(b) for b in server.bodies]
    assert not set(again) & sent  # no finished turn sent twice
    assert len(again) == 3  # the failed answer 2 of volcanoes, then its question and answer 3; nothing else
    assert dict((r[0], r[2]) for r in rows(spec)) == {"bees": 1, "tides": 3, "volcanoes": 3}


def test_a_conversation_specs_mistakes_name_the_key(tmp_path):
    from datagen.errors import UserError

    for old, new, message in [("about {{ topic }}", "about {{ topc }}", "steps.0.user_prompt: template uses `topc`"),
                              ("turns: 3", "turns: 0", "steps.0.turns: Input should be greater than or equal to 1"),
                              ("teacher: t\n", "teacher: t\n    user_teacher: u\n", "steps.0.user_teacher: no teacher")]:
        spec = write(tmp_path, "http://127.0.0.1:9/v1")
        assert old in spec.read_text()
        spec.write_text(spec.read_text().replace(old, new))
        with pytest.raises(UserError) as err:
            datagen.validate(spec)
        assert message in str(err.value), str(err.value)


def test_kill_9_mid_conversation_then_rerun_sends_no_finished_turn_again(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    topics = [f"topic{i}" for i in range(8)]

    def slow(body):
        time.sleep(0.05)
        return script(body)

    with ScriptedServer(slow) as server:
        (tmp_path / "topics.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in topics))
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC.format(base=server.base_url).replace("max_attempts: 1}", "max_attempts: 1, "
                                                                   "max_concurrency: 2}"))
        cmd = [sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(server.bodies) < 20 and time.monotonic() < deadline:  # in round 3 of 6
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        loaded = datagen.open_spec(spec)
        con = duckdb.connect(str(loaded.store_path), read_only=True)
        try:
            done = [json.loads(m) for (m,) in con.execute("SELECT messages FROM requests WHERE status = 'done'")
                    .fetchall()]
        finally:
            con.close()
        assert 0 < len(done) < 8 * 6 and proc.returncode == -signal.SIGKILL
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for messages in done:
            assert server.counts[messages_key({"messages": messages})] == 1, "a finished turn was sent again"
    got = rows(spec)
    assert len(got) == 8 and all(r[2] == 3 for r in got)
    for topic, dialogue, _ in got:
        assert [m["content"] for m in json.loads(dialogue)] == [f"{kind} {k} about {topic}" for k in (1, 2, 3)
                                                                for kind in ("question", "answer")]
