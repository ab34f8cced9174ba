"""`objective: onpolicy` on the bundled model: a truncated student samples, the full model scores its samples, the
student trains toward it by reverse KL, for two rounds; every round's samples and scores are stored with lineage and
`train_runs` records each round; a `datagen train` killed with SIGKILL between rounds resumes at the round it
reached without sampling or training a finished round again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen.errors import UserError

QUESTIONS = ["What is 2 + 3?", "What is 7 - 4?", "Name a colour.", "What is 3 times 3?", "Say hello.",
             "What is 10 divided by 2?"]

SPEC = """\
name: onpolicy
seed: 3
teachers:
  big: {backend: transformers, model: "bundled:smollm2-135m-instruct"}
sources:
  asks: {path: asks.jsonl}
train:
  student: bundled:smollm2-135m-instruct
  init: truncate
  input: asks
  system: Answer in one short sentence.
  prompt: "{{ question }}"
  objective: onpolicy
  onpolicy: {teacher: big, rounds: 2, max_tokens: 12, logprobs: 5, samples: 1}
  output: out/student
  max_steps: 2
  batch_size: 3
  max_length: 96
  learning_rate: 1.0e-4
"""


def write(folder: Path, text: str = SPEC) -> Path:
    (folder / "asks.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    spec = folder / "spec.yaml"
    spec.write_text(text)
    return spec


def datagen(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True, **kw)


def query(spec: Path, sql: str) -> list[dict]:
    out = datagen("query", str(spec), "--format", "json", sql)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_two_rounds_stored_recorded_and_resumed_after_kill_9_between_rounds(tmp_path, bundled_model_path):
    spec = write(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "train", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    marker = tmp_path / "out" / "student.rounds" / "round-0" / "datagen_train.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[0][-3000:] if proc.poll() is not None else "round 0 never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # round 0 saved and recorded: killed in round 1
    proc.wait()
    first = query(spec, "select round from train_runs order by started_at")
    assert first[0]["round"] == 0  # its record may still say running: the weights are written first
    sampled_0 = query(spec, "select key, updated_at from requests where step = '_onpolicy' and "
                            "key in (select key from outputs where step = '_onpolicy' and "
                            "json_extract(fields, '$.round') = 0) order by key")
    assert len(sampled_0) == len(QUESTIONS)

    again = datagen("train", str(spec), timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "round 1/2" not in again.stdout + again.stderr and "round 2/2" in again.stdout + again.stderr
    runs = query(spec, "select round, status, parent_run, output from train_runs where status <> 'failed' "
                       "order by round")
    assert [(r["round"], r["status"]) for r in runs] == [(0, "done"), (1, "done")]  # round 0 trained once
    assert len({r["parent_run"] for r in runs}) == 1
    assert runs[1]["output"].endswith("student.rounds/round-1")
    # round 0's samples were not asked again
    assert query(spec, "select key, updated_at from requests where key in (select key from outputs where step = "
                       "'_onpolicy' and json_extract(fields, '$.round') = 0) order by key") == sampled_0
    samples = query(spec, "select o._id, o._parent_id, json_extract_string(o.fields, '$.student') as student, "
                          "cast(json_extract(o.fields, '$.round') as int) as round from outputs o "
                          "where o.step = '_onpolicy'")
    assert sorted(s["round"] for s in samples) == [0] * 6 + [1] * 6
    assert all(s["student"].endswith("student.rounds/init") for s in samples if s["round"] == 0)
    assert all(s["student"].endswith("student.rounds/round-0") for s in samples if s["round"] == 1)
    scores = query(spec, "select o._id, o._parent_id, o.text, (select count(*) from logprobs l where l.row_id = o._id) "
                         "as n, (select min(len(top_ids)) from logprobs l where l.row_id = o._id) as k "
                         "from outputs o where o.step = '_onpolicy_score'")
    by_id = {s["_id"]: s for s in samples}
    assert scores and all(s["_parent_id"] in by_id and s["n"] > 0 and s["k"] == 5 for s in scores)
    lineage = query(spec, "select count(*) as n from lineage l join outputs o on o._id = l.child_id "
                          "where o.step = '_onpolicy_score' and l.role = 'input'")
    assert lineage == [{"n": len(scores)}]
    final = tmp_path / "out" / "student"
    assert (final / "config.json").is_file() and json.loads((final / "datagen_train.json").read_text())["rounds"] == 2
    assert (tmp_path / "out" / "student.rounds" / "round-1" / "config.json").is_file()  # kept beside it
    # a finished run, re-run: nothing sampled, scored or trained again
    before = query(spec, "select count(*) as n from requests")
    third = datagen("train", str(spec), timeout=900)
    assert third.returncode == 0 and "round 1/2" not in third.stdout + third.stderr
    assert query(spec, "select count(*) as n from requests") == before
    assert [r["round"] for r in query(spec, "select round from train_runs where status = 'done'")] == [0, 1]


@pytest.mark.parametrize("change, key, words", [
    ("  onpolicy: {teacher: big, rounds: 2, max_tokens: 12, logprobs: 5, samples: 1}\n", "train",
     "needs `onpolicy: {teacher: NAME}`"),
    ("teacher: big,", "train.onpolicy.teacher", "no teacher named `nobody`"),
    ('prompt: "{{ question }}"', "train.prompt", "question2"),
])
def test_an_onpolicy_specs_mistakes_name_the_key(tmp_path, change, key, words):
    text = SPEC.replace(change, {"teacher: big,": "teacher: nobody,",
                                 'prompt: "{{ question }}"': 'prompt: "{{ question2 }}"'}.get(change, ""))
    spec = write(tmp_path, text)
    from datagen.api import validate

    with pytest.raises(UserError) as err:
        validate(spec)
    assert key in str(err.value) and words in str(err.value), str(err.value)
