"""`strategy: expand` (self-instruct) against a scripted teacher: rounds, target, max_rounds, novelty decisions, chains,
resume after kill -9; and the ROUGE-L and cosine checks on hand-computed cases."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datagen.api import run
from datagen.spec.load import load_spec
from datagen.strategies.novelty import NoveltyIndex, RougeL
from tests.scripted_server import ScriptedServer, messages_key
from tests.test_run_scripted import store_rows

SEEDS = ["Write a poem about the sea.", "List three prime numbers.", "Translate hello into French.",
         "Summarise the plot of Hamlet.", "Explain how rain forms.", "Name a famous painter."]


def make_spec(tmp_path: Path, base_url: str, target: int = 8, batch: int = 4, max_rounds: int = 12,
              novelty: str = "{max_rouge_l: 0.7}", include_generated: bool = True, extra: str = "",
              teacher_opts: str = "") -> Path:
    (tmp_path / "seeds.jsonl").write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: ex
seed: 3
teachers:
  t:
    backend: openai
    base_url: {base_url}
    model: scripted
    max_attempts: 1
    sampling: {{temperature: 1.0, max_tokens: 30, seed: 100}}
{teacher_opts}
sources:
  seeds: {{path: seeds.jsonl}}
steps:
  - name: new_tasks
    strategy: expand
    teacher: t
    demos: {{from: seeds, k: 2, include_generated: {str(include_generated).lower()}}}
    prompt: |
      {{% for d in demos %}}Task: {{{{ d.instruction }}}}
      {{% endfor %}}New task:
    target: {target}
    batch: {batch}
    max_rounds: {max_rounds}
    output: instruction
    novelty: {novelty}
{extra}
""")
    return spec


def demos_in(body: dict) -> list[str]:
    return re.findall(r"^Task: (.*)$", body["messages"][-1]["content"], flags=re.M)


def varied(body: dict) -> str:
    """Sample seed s (100 + the candidate's number): s % 3 == 0 copies the first demo shown, s % 3 == 1 changes one
    word of it (ROUGE-L >= 0.7 against it), otherwise a task whose words no other task has."""
    if "New task:" not in body["messages"][-1]["content"]:
        return "an answer"
    s = body["seed"]
    first = demos_in(body)[0]
    if s % 3 == 0:
        return first
    if s % 3 == 1:
        words = first.split()
        return " ".join(words[:-1] + ["quickly."])
    return " ".join(f"w{s}x{j}" for j in range(5))


def _lcs(a: list, b: list) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_hand_computed():
    rouge = RougeL()
    # LCS(the cat sat on the mat, the cat lay on a mat) = the cat on mat: F = 2 * 4 / (6 + 6)
    assert rouge.score("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(8 / 12)
    # 10 tokens each, LCS 7: F = 0.7 exactly, which is "at" the threshold
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six seven x y z"
    assert rouge.score(a, b) == pytest.approx(0.7)
    # the same words in reverse order: overlap 4, but LCS 1, F = 2 / 8 (the overlap bound must not decide)
    assert rouge.score("a b c d", "d c b a") == pytest.approx(0.25)
    # on varied texts, the same F as a plain LCS table over rouge-score's tokens (what rouge_scorer computes;
    # importing rouge_scorer itself costs seconds of nltk)
    from rouge_score.tokenize import tokenize

    rng = np.random.default_rng(0)
    vocab = ["the", "a", "cat", "sat", "Mat", "on", "dog!", "3.5", "ran", "away", "é", "x-y"]
    for _ in range(300):
        x, y = (" ".join(rng.choice(vocab, size=rng.integers(0, 12))) for _ in range(2))
        tx, ty = tokenize(x, None), tokenize(y, None)
        expected = 2 * _lcs(tx, ty) / (len(tx) + len(ty)) if tx and ty else 0.0
        assert rouge.score(x, y) == pytest.approx(expected, abs=1e-12), (x, y)
    index = NoveltyIndex(0.7, None, None)
    index.add_many(["s1", "s2", "s3"], ["the cat sat on the mat", a, "a b c d"])
    at = index.check(b)
    assert (at.kept, at.duplicate_of, round(at.score, 6)) == (False, "s2", 0.7) and "ROUGE-L 0.700" in at.reason
    assert index.check("the cat lay on a mat").kept  # 0.667 < 0.7
    assert index.check("d c b a").kept
    assert index.check("The CAT  sat on the mat").duplicate_of == "s1"  # exact after normalisation
    assert index.check("   ").reason == "empty output"


def test_cosine_hand_computed():
    vectors = {"east": [1.0, 0.0], "north": [0.0, 1.0], "close": [0.9, np.sqrt(1 - 0.81)], "between": [0.8, 0.6],
               "far": [-1.0, 0.0]}
    index = NoveltyIndex(None, 0.9, lambda texts, ids: np.array([vectors[t] for t in texts], dtype=np.float32))
    index.add_many(["e", "n"], ["east", "north"])
    close = index.check("close", np.array(vectors["close"], dtype=np.float32))
    assert (close.kept, close.duplicate_of, round(close.score, 5)) == (False, "e", 0.9)  # cos = 0.9: at the threshold
    assert index.check("between", np.array(vectors["between"], dtype=np.float32)).kept  # cos 0.8 and 0.6
    assert index.check("far", np.array(vectors["far"], dtype=np.float32)).kept


def test_expand_reaches_target_and_records_every_rejection(tmp_path):
    answer_step = """\
  - name: answers
    strategy: label
    teacher: t
    input: new_tasks
    prompt: "{{ instruction }}"
    output: response
"""
    with ScriptedServer(varied) as server:
        spec = make_spec(tmp_path, server.base_url, extra=answer_step)
        summary = run(load_spec(spec), log=lambda m: None)
        sent = len([b for b in server.bodies if "New task:" in b["messages"][-1]["content"]])
        server.reset()
        again = run(load_spec(spec), log=lambda m: None)
        assert server.bodies == [] and again.models_loaded == []  # a finished spec re-runs from the store
    assert summary.steps[0].generated == sent
    accepted = store_rows(spec, "select _id, instruction from new_tasks")
    assert len(accepted) == 8 and len({t for _, t in accepted}) == 8
    assert all(re.fullmatch(r"(w\d+x\d ?){5}", t) for _, t in accepted)  # only the novel ones
    # about a third of the candidates are novel, so reaching 8 takes several rounds of at most 4 requests
    assert sent >= 8 * 3 - 2 and summary.steps[0].planned == sent
    decisions = store_rows(spec, "select row_id, kept, reason, score, duplicate_of from decisions "
                                 "where stage = 'new_tasks'")
    assert len(decisions) == sent  # one verdict per candidate
    rejected = [d for d in decisions if not d[1]]
    assert len(rejected) == sent - 8
    # a rejected candidate names the item it repeats: the first demo its request showed (a seed or an accepted task)
    by_text = {**dict(store_rows(spec, "select instruction, _id from seeds")), **{t: i for i, t in accepted}}
    sent_for = dict(store_rows(spec, "select o._id, r.messages from outputs o join requests r on r.key = o.key"))
    texts = dict(store_rows(spec, "select _id, text from outputs where step = 'new_tasks'"))
    for row_id, _, reason, score, duplicate_of in rejected:
        first = demos_in({"messages": json.loads(sent_for[row_id])})[0]
        assert duplicate_of == by_text[first] and score >= 0.7
        assert reason.startswith("exact duplicate" if texts[row_id] == first else "ROUGE-L")
    # chain: answers -> new_tasks -> demos; with include_generated, later rounds show accepted tasks as demos
    chain = store_rows(spec, "select a._parent_id, l.parent_id from answers a join lineage l on l.child_id = "
                             "a._parent_id and l.role = 'demo'")
    assert {p for p, _ in chain} == {i for i, _ in accepted}
    demo_parents = {p for _, p in store_rows(spec, "select child_id, parent_id from lineage where role = 'demo'")}
    assert demo_parents & {i for i, _ in accepted}, "no accepted task was ever shown as a demo"
    assert store_rows(spec, "select count(*) from answers")[0][0] == 8


def test_expand_stops_at_max_rounds_when_the_teacher_repeats_itself(tmp_path):
    with ScriptedServer(lambda body: "Describe your favourite season.") as server:
        spec = make_spec(tmp_path, server.base_url, target=5, batch=4, max_rounds=3)
        logs: list[str] = []
        summary = run(load_spec(spec), log=logs.append)
        # round 1 asks 4 and keeps 1; rounds 2 and 3 ask min(missing 4, batch 4) and keep nothing
        assert len(server.bodies) == 12 and summary.steps[0].planned == 12
    assert any("stopped after max_rounds (3) with 1 of 5" in m for m in logs)
    rows = store_rows(spec, "select _id, instruction from new_tasks")
    assert [t for _, t in rows] == ["Describe your favourite season."]
    rejected = store_rows(spec, "select reason, duplicate_of, score from decisions where stage = 'new_tasks' "
                                "and not kept")
    assert len(rejected) == 11
    assert all(r[0].startswith("exact duplicate") and r[1] == rows[0][0] and r[2] == 1.0 for r in rejected)


def test_expand_without_generated_demos_draws_from_the_source_only(tmp_path):
    with ScriptedServer(varied) as server:
        spec = make_spec(tmp_path, server.base_url, target=4, include_generated=False)
        run(load_spec(spec), log=lambda m: None)
        assert all(set(demos_in(b)) <= set(SEEDS) for b in server.bodies)
    assert store_rows(spec, "select count(*) from new_tasks")[0][0] == 4


def test_expand_cosine_novelty_with_the_bundled_embedder(tmp_path):
    """A paraphrase of a seed is rejected by embedding cosine, with the similarity the model gives."""
    replies = iter(["Write a short poem about the ocean.", "Compute the square root of 144."] * 4)
    with ScriptedServer(lambda body: next(replies)) as server:
        spec = make_spec(tmp_path, server.base_url, target=2, batch=2, max_rounds=1,
                         novelty="{max_cosine: 0.8}", teacher_opts="    max_concurrency: 1")
        run(load_spec(spec), log=lambda m: None)
    got = store_rows(spec, "select o.text, d.kept, d.score, d.duplicate_of, d.reason from decisions d join outputs o "
                           "on o._id = d.row_id order by o._sample_index")
    assert [g[1] for g in got] == [False, True]
    from sentence_transformers import SentenceTransformer

    from datagen.bundled import resolve_model

    model = SentenceTransformer(resolve_model("bundled:all-minilm-l6-v2"), device="cpu")
    a, b = model.encode(["Write a short poem about the ocean.", "Write a poem about the sea."], normalize_embeddings=True)
    assert got[0][2] == pytest.approx(float(a @ b), abs=1e-4) and got[0][2] >= 0.8
    assert got[0][3] == dict(store_rows(spec, "select instruction, _id from seeds"))["Write a poem about the sea."]
    assert got[0][4].startswith("cosine")


def test_kill_9_mid_round_then_rerun_sends_nothing_twice_and_keeps_the_target(tmp_path):
    def slow(body):
        time.sleep(0.04)
        return varied(body)

    with ScriptedServer(slow) as server:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        spec = make_spec(tmp_path / "a", server.base_url, target=12, batch=6, max_rounds=20,
                         teacher_opts="    max_concurrency: 2")
        cmd = [sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(server.bodies) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = store_rows(spec, "select messages, sample_index from requests where status = 'done'")
        assert 0 < len(done_before) and proc.returncode == -signal.SIGKILL
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for messages, index in done_before:
            key = messages_key({"messages": json.loads(messages), "seed": 100 + index})
            assert server.counts[key] == 1, "a request finished before the kill was sent again"
        # only the batch in flight at the kill (at most max_concurrency * 4 requests) is asked again
        assert sum(server.counts.values()) - len(server.counts) <= 8
        # the same spec run without a kill accepts exactly the same items
        clean = make_spec(tmp_path / "b", server.base_url, target=12, batch=6, max_rounds=20)
        run(load_spec(clean), log=lambda m: None)
    killed = store_rows(spec, "select instruction, _sample_index from new_tasks order by 2")
    assert len(killed) == 12 and len({t for t, _ in killed}) == 12
    assert killed == store_rows(clean, "select instruction, _sample_index from new_tasks order by 2")
    assert store_rows(spec, "select count(*), count(distinct key) from outputs")[0] == \
        store_rows(spec, "select count(*), count(*) from requests where status = 'done'")[0]


def test_a_demo_without_the_column_the_prompt_reads_says_why():
    """With include_generated a generated demo has only the output column; the error says so, not a bare jinja one."""
    from datagen.errors import UserError
    from datagen.spec.models import ExpandStep
    from datagen.strategies.expand import render

    step = ExpandStep(name="new_tasks", strategy="expand", teacher="t", target=3, output="task",
                      demos={"from": "seeds", "k": 2, "include_generated": True},
                      prompt="{% for d in demos %}Task: {{ d.instruction.upper() }}\n{% endfor %}New task:")
    assert render(step, [{"_id": "a", "instruction": "sort a list"}])[-1]["content"].startswith("Task: SORT A LIST")
    with pytest.raises(UserError, match=r"new_tasks: the prompt failed on a demo row: .*include_generated.*`task`"):
        render(step, [{"_id": "a", "instruction": "sort a list"}, {"_id": "b", "task": "a generated task"}])
