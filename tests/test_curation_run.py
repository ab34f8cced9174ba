"""The curation runner on a real DuckDB file: decisions, the funnel, the `curated` view, determinism, reuse of
stored embeddings; and end to end through the CLI after `datagen run` with a scripted teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from curation.run import run_curation
from datagen.store.stats import funnel as store_funnel
from datagen.cli import main
from datagen.spec.load import load_spec, load_spec_text
from datagen.api import plan as build_plan
from datagen.store.connection import open_store
from datagen.store.views import sync_views
from tests.scripted_server import ScriptedServer

DATA = Path(__file__).parent / "data"


def gsm8k() -> list[dict]:
    return [json.loads(line) for line in (DATA / "gsm8k_12.jsonl").read_text().splitlines()]


def items() -> list[dict]:
    """12 real problems with their worked answers, plus rows planted to be dropped by each stage."""
    rows = [{"question": r["question"], "solution": r["answer"], "score": 5 + i % 5} for i, r in enumerate(gsm8k())]
    q0, q1, q2 = rows[0]["question"], rows[1]["question"], rows[2]["question"]
    rows += [
        {"question": "Say hi.", "solution": "hi", "score": 9},  # regex: no #### answer
        {"question": "Count up.", "solution": "#### 1 " + "and then one more " * 20, "score": 9},  # repetition
        {"question": "Easy one?", "solution": "#### 2", "score": 1},  # score below min
        {"question": "Benchmark problem: a farmer has 17 sheep and all but nine run away, how many are left?",
         "solution": "#### 9", "score": 9},  # decontaminate
        {"question": q0.upper().replace(" ", "  "), "solution": "#### 72", "score": 9},  # exact (case, spaces)
        {"question": q1.replace("babysitting", "dog walking", 1), "solution": "#### 10", "score": 6},  # one word
        {"question": q2.replace("wallet", "purse"), "solution": "#### 5", "score": 8},  # one word
    ]
    return rows


def spec_text(n: int = 6) -> str:
    spec = {
        "name": "cur", "seed": 11,
        "teachers": {"t": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "sources": {"items": {"inline": items()},
                    "bench": {"inline": [{"question": "A farmer has 17 sheep and all but nine run away. How many "
                                                      "sheep does the farmer have left?"}]}},
        "steps": [{"name": "solve", "strategy": "label", "teacher": "t", "input": "items",
                   "prompt": "{{ question }}", "output": "answer"}],
        "curation": {
            "input": "items",
            "filters": [{"type": "regex", "column": "solution", "must_match": "####"},
                        {"type": "repetition", "column": "solution", "max_share": 0.3},
                        {"type": "score", "column": "score", "min": 2}],
            "decontaminate": {"against": "bench", "column": "question", "ngram": 6},
            "dedup": [{"type": "exact", "column": "question"},
                      {"type": "minhash", "column": "question", "threshold": 0.7, "keep_by": "score"},
                      {"type": "semantic", "column": "question", "threshold": 0.9}],
            "select": {"n": n, "quality": {"column": "score"},
                       "diversity": {"method": "kcenter", "column": "question", "pool": 2}},
        },
    }
    return yaml.safe_dump(spec, sort_keys=False)


@pytest.fixture()
def store(tmp_path):
    loaded = load_spec_text(spec_text(), tmp_path / "spec.yaml")
    plan = build_plan(loaded)
    con = open_store(loaded.store_path)
    sync_views(con, plan.source_rows, plan.views)
    yield con, loaded, plan
    con.close()


def decisions(con) -> list[tuple]:
    return con.execute("SELECT row_id, stage, kept, reason, score, duplicate_of FROM decisions "
                       "ORDER BY stage, row_id").fetchall()


def test_every_stage_records_every_row_and_the_funnel_adds_up(store):
    con, loaded, plan = store
    logs: list[str] = []
    funnel = run_curation(con, loaded, plan, log=logs.append)
    stages = [f["stage"] for f in funnel]
    assert stages == ["filter:regex", "filter:repetition", "filter:score", "decontaminate", "dedup:exact",
                      "dedup:minhash", "dedup:semantic", "select"]
    assert funnel[0]["rows_in"] == 19
    for before, after in zip(funnel, funnel[1:]):
        assert before["rows_out"] == after["rows_in"]
    assert [f["rows_in"] - f["rows_out"] for f in funnel[:7]] == [1, 1, 1, 1, 1, 1, 1]
    assert funnel[-1]["rows_out"] == 6
    counts = dict(con.execute("SELECT stage, count(*) FROM decisions GROUP BY stage").fetchall())
    assert counts == {f["stage"]: f["rows_in"] for f in funnel}
    got = [s.as_dict() for s in store_funnel(con, loaded.spec.curation.stage_names())]
    assert got == [{k: f[k] for k in ("stage", "rows_in", "rows_out")}
                   for f in funnel]
    # the reasons and duplicate_of point at the planted rows
    by_q = {r[0]: r[1] for r in con.execute("SELECT _id, question FROM items").fetchall()}
    dropped = {(stage, by_q[rid]): (reason, dup) for rid, stage, kept, reason, _, dup in decisions(con) if not kept}
    assert ("decontaminate", items()[15]["question"]) in dropped
    reason, dup = dropped[("dedup:exact", items()[16]["question"])]
    assert by_q[dup] == items()[0]["question"]
    # keep_by score: the planted variant (score 8) is kept and the original (score 7) is the duplicate
    reason, dup = dropped[("dedup:minhash", items()[2]["question"])]
    assert "Jaccard" in reason and by_q[dup] == items()[18]["question"]
    reason, dup = dropped[("dedup:semantic", items()[17]["question"])]  # Jaccard 0.68 < 0.7, cosine 0.92 >= 0.9
    assert "cosine" in reason and by_q[dup] == items()[1]["question"]
    curated = con.execute("SELECT question FROM curated").fetchall()
    assert len(curated) == 6
    ranked = con.execute("SELECT row_id FROM _curated ORDER BY rank").fetchall()
    assert [r[0] for r in con.execute("SELECT _id FROM curated").fetchall()] == [r[0] for r in ranked]
    assert any("embedding" in line for line in logs)


def test_rerunning_gives_the_same_selection_and_reuses_embeddings(store):
    con, loaded, plan = store
    run_curation(con, loaded, plan, log=lambda m: None)
    first = decisions(con)
    curated = con.execute("SELECT _id FROM curated").fetchall()
    stored = con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0]
    logs: list[str] = []
    run_curation(con, loaded, plan, log=logs.append)
    assert decisions(con) == first  # the previous run's decisions were replaced, not added to
    assert con.execute("SELECT _id FROM curated").fetchall() == curated
    assert con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0] == stored
    assert not any("embedding" in line for line in logs)  # nothing was encoded again


def test_select_without_diversity_and_another_seed(tmp_path):
    text = spec_text(n=3).replace("seed: 11", "seed: 12")
    loaded = load_spec_text(text, tmp_path / "spec.yaml")
    loaded.spec.curation.select.diversity = None
    plan = build_plan(loaded)
    con = open_store(loaded.store_path)
    try:
        sync_views(con, plan.source_rows, plan.views)
        funnel = run_curation(con, loaded, plan, log=lambda m: None)
        scores = [r[0] for r in con.execute("SELECT score FROM curated").fetchall()]
    finally:
        con.close()
    assert funnel[-1]["rows_out"] == 3 and scores == sorted(scores, reverse=True) and scores[0] == 9


# --- end to end: `datagen run` generates, then curates; `datagen curate` and `status` ------------------------------

E2E = """\
name: e2e
seed: 1
teachers:
  t: {backend: openai, base_url: "BASE", model: scripted, max_attempts: 1}
sources:
  problems:
    path: problems.jsonl
steps:
  - {name: solve, strategy: label, teacher: t, input: problems, prompt: "{{ question }}", output: solution}
curation:
  input: solve
  filters:
    - {type: truncated}
    - {type: verify_math, column: solution, reference: answer}
  select: {n: 5, difficulty: {column: solution}}
"""


def script(body: dict):
    question = body["messages"][-1]["content"]
    row = next(r for r in gsm8k() if r["question"] == question)
    index = gsm8k().index(row)
    answer = row["answer"].split("####")[-1].strip()
    if index % 4 == 1:
        return {"text": "Let me think step by step and", "finish_reason": "length"}
    if index % 4 == 2:
        return f"I think it is {answer}1.\n#### {answer}1"
    if index == 3:
        return {"status": 400, "body": {"error": {"message": "bad request"}}}
    return f"Working it out carefully: the answer is {answer}.\n#### {answer}"


def test_run_then_curate_then_status_through_the_cli(tmp_path, capsys):
    (tmp_path / "problems.jsonl").write_text((DATA / "gsm8k_12.jsonl").read_text())
    with ScriptedServer(script) as server:
        spec = tmp_path / "spec.yaml"
        spec.write_text(E2E.replace("BASE", server.base_url))
        with pytest.raises(SystemExit) as done:
            main(["run", str(spec), "--quiet"])
        assert done.value.code in (0, None)
    loaded = load_spec(spec)
    con = open_store(loaded.store_path)
    try:
        funnel = [s.as_dict() for s in store_funnel(con, loaded.spec.curation.stage_names())]
        curated = con.execute("SELECT solution FROM curated").fetchall()
    finally:
        con.close()
    # 12 problems: one failed request (no row), three truncated (1, 5, 9), three wrong answers (2, 6, 10)
    assert funnel == [{"stage": "filter:truncated", "rows_in": 11, "rows_out": 8},
                      {"stage": "filter:verify_math", "rows_in": 8, "rows_out": 5},
                      {"stage": "select", "rows_in": 5, "rows_out": 5}]
    assert all("####" in s for (s,) in curated)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["curate", str(spec)])
    assert done.value.code in (0, None)
    assert "filter:truncated: 11 in, 8 out, 3 dropped" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["status", str(spec)])
    out = capsys.readouterr().out
    assert "curation funnel:" in out and "select: 5 in, 5 out" in out


def test_curate_before_any_generation_says_so(tmp_path, capsys):
    (tmp_path / "problems.jsonl").write_text((DATA / "gsm8k_12.jsonl").read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(E2E.replace("BASE", "http://127.0.0.1:9/v1"))
    with pytest.raises(SystemExit) as done:
        main(["curate", str(spec)])
    assert done.value.code in (0, None)
    got = capsys.readouterr()
    # messages go to stderr, the funnel (the result) to stdout
    assert "`solve` has no rows yet; run `datagen run` first" in got.err and "select: 0 in, 0 out" in got.out


# --- difficulty by student: questions the student already solves are dropped (s1) ----------------------------------

STUDENT = """\
name: probe
seed: 1
teachers:
  t: {backend: openai, base_url: "BASE", model: teacher, max_attempts: 1}
  kid: {backend: openai, base_url: "BASE", model: student, max_attempts: 1}
sources:
  problems:
    path: problems.jsonl
steps:
  - {name: solve, strategy: label, teacher: t, input: problems, prompt: "Solve: {{ question }}", output: solution}
curation:
  input: solve
  select:
    n: 20
    difficulty: {by: student, student: kid, column: solution, question: question, reference: answer, max_tokens: 64}
"""


def student_script(body: dict):
    """The teacher answers everything; the student solves problems 0, 4 and 8, is wrong on the rest, fails on 7."""
    question = body["messages"][-1]["content"]
    if body["model"] == "teacher":
        return "Teacher's worked solution.\n#### 1"
    index = [r["question"] for r in gsm8k()].index(question)
    answer = gsm8k()[index]["answer"].split("####")[-1].strip()
    assert body["temperature"] == 0 and body["max_tokens"] == 64
    if index == 7:
        return {"status": 500, "body": {"error": {"message": "student server down"}}}
    if index % 4 == 0:
        return f"So the answer is {answer}."
    return "I am not sure, maybe 1234567."


def test_difficulty_by_student_drops_what_the_student_already_solves(tmp_path):
    (tmp_path / "problems.jsonl").write_text((DATA / "gsm8k_12.jsonl").read_text())
    spec = tmp_path / "spec.yaml"
    with ScriptedServer(student_script) as server:
        spec.write_text(STUDENT.replace("BASE", server.base_url))
        with pytest.raises(SystemExit) as done:
            main(["run", str(spec), "--quiet"])
        assert done.value.code in (0, None)
        student_calls = [b for b in server.bodies if b["model"] == "student"]
        assert len(student_calls) == 12
        loaded = load_spec(spec)
        con = open_store(loaded.store_path)
        try:
            funnel = [s.as_dict() for s in store_funnel(con, loaded.spec.curation.stage_names())]
            rows = con.execute(
                "SELECT s.question, d.kept, d.reason FROM decisions d JOIN solve s ON s._id = d.row_id "
                "WHERE d.stage = 'select:difficulty'").fetchall()
            curated = {q for (q,) in con.execute("SELECT question FROM curated").fetchall()}
            probes = con.execute("SELECT count(*), count(error) FROM requests WHERE step = '_probe'").fetchone()
        finally:
            con.close()
        assert funnel == [{"stage": "select:difficulty", "rows_in": 12, "rows_out": 9},
                          {"stage": "select", "rows_in": 9, "rows_out": 9}]
        questions = [r["question"] for r in gsm8k()]
        verdict = {questions.index(q): (kept, reason) for q, kept, reason in rows}
        assert {i for i, (kept, _) in verdict.items() if not kept} == {0, 4, 8}
        assert "too easy: the student kid already answers" in verdict[0][1]
        assert "student request failed" in verdict[7][1] and verdict[7][0]
        assert "fails it (answer 1234567" in verdict[1][1]
        assert curated == {questions[i] for i in range(12) if i not in (0, 4, 8)}
        assert probes == (12, 1)
        # `datagen curate` reuses the stored answers: only the failed probe is asked again
        server.reset()
        with pytest.raises(SystemExit) as done:
            main(["curate", str(spec)])
        assert done.value.code in (0, None)
        assert [questions.index(b["messages"][-1]["content"]) for b in server.bodies] == [7]


def test_difficulty_by_student_needs_its_columns_and_a_known_student(tmp_path):
    from datagen.errors import UserError

    (tmp_path / "problems.jsonl").write_text((DATA / "gsm8k_12.jsonl").read_text())
    bad = {"reference: answer": "reference: nope", "student: kid": "student: kidd",
           ", reference: answer": ""}
    expect = {"reference: nope": "`nope` is not a column of `solve`",
              "student: kidd": "name one of the spec's teachers (t, kid)",
              "": "needs `reference`"}
    for (old, new) in bad.items():
        text = STUDENT.replace("BASE", "http://127.0.0.1:9/v1").replace(old, new)
        with pytest.raises(UserError) as err:
            build_plan(load_spec_text(text, tmp_path / "spec.yaml"))
        assert expect[new] in str(err.value) and "curation.select.difficulty" in str(err.value)


def test_a_decisions_write_replaces_only_what_its_owner_wrote(tmp_path):
    """One replace rule: curation's write replaces every curation decision (a stage gone from the spec too), never a
    generation step's, whatever its stage names look like (a step named `selected_tasks` or `filters`)."""
    from datagen.store.decisions import CURATION, replace_decisions, step_owner
    from datagen.verdict import Verdict

    con = open_store(tmp_path / "s.duckdb")
    try:
        replace_decisions(con, CURATION, [("filter:length", "a", Verdict(True)), ("dedup:exact", "a", Verdict(True))])
        for step in ("selected_tasks", "filters"):
            replace_decisions(con, step_owner(step), [(step, "a", Verdict(False, "no"))])
        replace_decisions(con, CURATION, [("select", "a", Verdict(True, "picked", 1.0))])
        got = sorted(con.execute("SELECT owner, stage, kept FROM decisions").fetchall())
    finally:
        con.close()
    assert got == [("curation", "select", True), ("step:filters", "filters", False),
                   ("step:selected_tasks", "selected_tasks", False)]


def test_a_step_cannot_take_a_curation_stage_name(tmp_path):
    from datagen.errors import UserError

    with pytest.raises(UserError, match="decontaminate.*taken by the store"):
        load_spec_text(spec_text().replace("name: solve", "name: decontaminate"), tmp_path / "spec.yaml")


def test_a_priced_students_probe_is_costed_and_held_under_max_usd(tmp_path):
    """The probe is an ordinary generation of the run loop: each answer is costed at the student's price, and
    `max_usd` (the whole store's spend) stops the probe once the next request's worst case would pass it; a re-run
    with a higher cap asks only what is missing."""
    (tmp_path / "problems.jsonl").write_text((DATA / "gsm8k_12.jsonl").read_text())
    spec = tmp_path / "spec.yaml"
    priced = STUDENT.replace("model: student, max_attempts: 1}",
                             "model: student, max_attempts: 1, price: {input: 1000, output: 1000}}")
    with ScriptedServer(student_script) as server:
        spec.write_text(priced.replace("BASE", server.base_url))
        with pytest.raises(SystemExit) as done:
            main(["run", str(spec), "--quiet", "--max-usd", "0.5"])
        assert done.value.code == 1  # the cap stopped the run (finished work kept)
        asked = [b for b in server.bodies if b["model"] == "student"]
        loaded = load_spec(spec)
        con = open_store(loaded.store_path)
        try:
            done_probes = con.execute("SELECT count(*), min(cost_usd), sum(cost_usd) FROM requests "
                                      "WHERE step = '_probe' AND status = 'done'").fetchone()
            spent = con.execute("SELECT sum(cost_usd) FROM requests").fetchone()[0]
        finally:
            con.close()
        assert 0 < len(asked) < 12 and done_probes[0] == len(asked) - (7 in _indices(asked))
        assert done_probes[1] > 0 and spent <= 0.5  # every answer costed; the cap held over the store's spend
        server.reset()
        with pytest.raises(SystemExit) as done:
            main(["curate", str(spec), "--max-usd", "100"])
        assert done.value.code in (0, None)
        again = _indices(server.bodies)
        assert len(again) == 12 - done_probes[0] and not set(again) & (set(_indices(asked)) - {7})


def _indices(bodies: list[dict]) -> list[int]:
    questions = [r["question"] for r in gsm8k()]
    return [questions.index(b["messages"][-1]["content"]) for b in bodies]
