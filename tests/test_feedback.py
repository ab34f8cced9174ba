"""Feedback and self-knowledge steps against a scripted teacher: judge parsing, pairwise position bias, pairs with
margins, revisions, self-consistency and verification, the preference export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from typer.testing import CliRunner

from datagen.cli import app
from datagen.errors import UserError
from datagen.api import run
from datagen.spec.load import load_spec
from datagen.api import plan as build_plan
from tests.scripted_server import ScriptedServer
from tests.test_run_scripted import store_rows

PROBLEMS = [{"question": f"What is {a} plus {b}?", "answer": f"{a} and {b} make {a + b}. #### {a + b}"}
            for a, b in [(2, 3), (4, 4), (10, 7), (6, 1)]]


def write_spec(tmp_path: Path, base_url: str, steps: str, extra: str = "") -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: fb
seed: 3
teachers:
  t:
    backend: openai
    base_url: {base_url}
    model: scripted
    max_attempts: 2
    sampling: {{temperature: 1.0, max_tokens: 64, seed: 1}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: attempt
    strategy: label
    teacher: t
    input: problems
    prompt: "Q: {{{{ question }}}}"
    n: 3
    output: solution
{steps}
{extra}""")
    return spec


def quiet_run(spec: Path):
    return run(load_spec(spec), log=lambda m: None)


def section(prompt: str, title: str) -> str:
    """The text under `title:` in a judge prompt (up to the next blank line)."""
    return re.search(rf"{title}:\n(.*?)\n\n", prompt, re.S).group(1)


def student(body: dict) -> str:
    """Sample i (seed 1 + i) of question `a plus b` answers `a+b` for samples 0 and 1 and `a+b+i` for sample 2."""
    a, b = map(int, re.findall(r"\d+", body["messages"][-1]["content"]))
    i = body["seed"] - 1
    return f"attempt {i}: #### {a + b + (i if i == 2 else 0)}"


def score_script(scores: dict) -> callable:
    """The student as above; the judge scores a response by (question's first number, sample index)."""
    def script(body):
        prompt = body["messages"][-1]["content"]
        if not prompt.startswith("You are a strict grader"):
            return student(body)
        first = int(re.findall(r"\d+", section(prompt, "Task"))[0])
        sample = int(re.search(r"attempt (\d)", section(prompt, "Response")).group(1))
        return scores[(first, sample)]
    return script


GRADE = """\
  - name: grade
    strategy: judge
    teacher: t
    input: attempt
    rubric: Is the final answer correct?
    output: score
    max_failure_rate: 0.9
"""


def test_judge_scores_reasons_and_bad_verdicts(tmp_path):
    scores = {(a, i): f"The sum is right.\nScore: {9 - i}" for a in (2, 4, 10, 6) for i in range(3)}
    scores[(4, 1)] = "Reason: too long.\nScore: 12"  # out of range
    scores[(10, 2)] = "It looks fine to me."  # no score
    scores[(6, 0)] = '{"score": 7.5, "reason": "mostly right"}'
    with ScriptedServer(score_script(scores)) as server:
        spec = write_spec(tmp_path, server.base_url, GRADE)
        summary = quiet_run(spec)
        judge_prompts = [b["messages"][-1]["content"] for b in server.bodies if "grader" in b["messages"][-1]["content"]]
    assert summary.steps[1].planned == 12 and summary.steps[1].failed == 2
    assert all("Criteria: Is the final answer correct?" in p and "from 1 to 10" in p for p in judge_prompts)
    rows = store_rows(spec, "select question, solution, score, score_reason, _parent_id from grade order by 1, 2")
    assert len(rows) == 10
    got = {(r[0], r[1][:9]): (r[2], r[3]) for r in rows}
    assert got[("What is 2 plus 3?", "attempt 0")] == (9.0, "The sum is right.")
    assert got[("What is 2 plus 3?", "attempt 2")] == (7.0, "The sum is right.")
    assert got[("What is 6 plus 1?", "attempt 0")] == (7.5, "mostly right")
    # every judge row's parent is a row of the judged step
    assert {r[4] for r in rows} <= {r[0] for r in store_rows(spec, "select _id from attempt")}
    errors = sorted(e for (e,) in store_rows(spec, "select error from requests where step = 'grade' and "
                                                   "status = 'failed'"))
    assert errors[0].startswith("no score in the verdict") and "It looks fine" in errors[0]
    assert errors[1].startswith("score 12 is outside the scale 1 to 10")


def test_pairs_by_score_with_margin(tmp_path):
    scores = {(a, i): f"ok\nScore: {s}" for a, ss in {2: (9, 8, 2), 4: (5, 5, 4), 10: (3, 8, 6), 6: (7, 7, 7)}.items()
              for i, s in enumerate(ss)}
    with ScriptedServer(score_script(scores)) as server:
        spec = write_spec(tmp_path, server.base_url, GRADE + "    pairs: {by: score, min_margin: 2}\n")
        quiet_run(spec)
        sent = len(server.bodies)
        pairs = store_rows(spec, "select p.chosen, p.rejected, p.margin, p.chosen_id, p.rejected_id, p._id, "
                                 "p._parent_id, json_extract_string(p.prompt, '$[0].content') from pairs p "
                                 "where step = 'grade' order by chosen")
        # 2+3: 9 over 2 (margin 7); 10+7: 8 over 3 (margin 5); 4+4 (margin 1) and 6+1 (all equal) make none
        assert [(c[:9], r[:9], m) for c, r, m, *_ in pairs] == [("attempt 0", "attempt 2", 7.0),
                                                                ("attempt 1", "attempt 0", 5.0)]
        for chosen, _rejected, _, cid, rid, pid, parent, prompt in pairs:
            lineage = store_rows(spec, f"select parent_id, role from lineage where child_id = '{pid}' order by role")
            assert lineage == [(cid, "chosen"), (rid, "rejected")]
            assert store_rows(spec, f"select solution from attempt where _id = '{cid}'") == [(chosen,)]
            question = store_rows(spec, f"select question from problems where _id = '{parent}'")[0][0]
            assert prompt == f"Q: {question}"
        decisions = store_rows(spec, "select kept, reason from decisions where stage = 'pairs:grade' order by 2")
        assert sorted(k for k, _ in decisions) == [False, False, True, True]
        assert any("best minus worst score is 1, under min_margin 2" in r for _, r in decisions)
        assert any("best minus worst score is 0" in r for _, r in decisions)
        # a re-run with a smaller margin rebuilds the pairs from stored verdicts, sending nothing
        spec.write_text(spec.read_text().replace("min_margin: 2", "min_margin: 1"))
        quiet_run(spec)
        assert len(server.bodies) == sent
    assert len(store_rows(spec, "select * from pairs")) == 3
    assert len(store_rows(spec, "select * from decisions where stage = 'pairs:grade'")) == 4
    status = CliRunner().invoke(app, ["status", str(spec)])
    assert status.exit_code == 0 and "pairs:grade: 3 pairs built, 1 dropped" in status.output


PAIRWISE = """\
  - name: duel
    strategy: judge
    teacher: t
    input: attempt
    rubric: Which final answer is correct?
    pairwise: true
    pairs: {by: verdict}
    output: verdict
"""


def pairwise_script(judge):
    def script(body):
        prompt = body["messages"][-1]["content"]
        if not prompt.startswith("You are a strict grader"):
            return student(body)
        return judge(section(prompt, "Response A"), section(prompt, "Response B"))
    return script


def test_pairwise_biased_judge_gives_ties_and_a_fair_judge_gives_pairs(tmp_path):
    # a judge that always prefers whatever is shown first: every pair disagrees across orders
    with ScriptedServer(pairwise_script(lambda a, b: "A looks better.\nWinner: A")) as server:
        spec = write_spec(tmp_path / "biased" if (tmp_path / "biased").mkdir() is None else None,
                          server.base_url, PAIRWISE)
        quiet_run(spec)
        shown = [(section(b["messages"][-1]["content"], "Response A")[:9],
                  section(b["messages"][-1]["content"], "Response B")[:9])
                 for b in server.bodies if "grader" in b["messages"][-1]["content"]]
    # 4 inputs x 3 unordered pairs x 2 orders, each pair asked both ways
    assert len(shown) == 24 and all((b, a) in shown for a, b in shown)
    assert store_rows(spec, "select count(*) from pairs") == [(0,)]
    ties = store_rows(spec, "select kept, reason from decisions where stage = 'pairs:duel'")
    assert len(ties) == 12 and all(not k and "position bias" in r for k, r in ties)
    rows = store_rows(spec, "select verdict, verdict_reason, verdict_other, _parent_id from duel")
    assert len(rows) == 24 and {r[0] for r in rows} == {"A"} and rows[0][1] == "A looks better."
    lineage = store_rows(spec, "select count(*) from lineage l join duel d on l.child_id = d._id "
                               "where l.role = 'compared' and l.parent_id = d.verdict_other")
    assert lineage == [(24,)]

    def fair(a, b):  # prefers the correct sum (samples 0 and 1), calls two correct ones a tie
        wrong_a, wrong_b = "attempt 2" in a, "attempt 2" in b
        return "Winner: tie" if wrong_a == wrong_b else f"Winner: {'B' if wrong_a else 'A'}"

    with ScriptedServer(pairwise_script(fair)) as server:
        (tmp_path / "fair").mkdir()
        spec = write_spec(tmp_path / "fair", server.base_url, PAIRWISE)
        quiet_run(spec)
    pairs = store_rows(spec, "select chosen, rejected, method from pairs order by chosen")
    assert len(pairs) == 8 and all(c[:9] in ("attempt 0", "attempt 1") and r[:9] == "attempt 2" and by == "verdict"
                                   for c, r, by in pairs)
    assert store_rows(spec, "select count(*), bool_and(reason = 'the judge called it a tie') from decisions "
                            "where stage = 'pairs:duel' and not kept") == [(4, True)]


def test_revise_pairs_revision_over_original(tmp_path):
    def script(body):
        prompt = body["messages"][-1]["content"]
        if not prompt.startswith("Here is a task"):
            return student(body)
        response = section(prompt, "Response")
        a, b = map(int, re.findall(r"\d+", section(prompt, "Task")))
        return response if response.startswith("attempt 0") else re.sub(r"#### \d+", f"#### {a + b}", response)

    step = """\
  - name: fix
    strategy: judge
    teacher: t
    input: attempt
    rubric: The final answer must be the correct sum.
    revise: true
    output: revision
"""
    with ScriptedServer(script) as server:
        spec = write_spec(tmp_path, server.base_url, step)
        quiet_run(spec)
    pairs = store_rows(spec, "select p.chosen, p.rejected, p.method, a.question from pairs p "
                             "join attempt a on a._id = p.rejected_id order by 1, 2")
    assert len(pairs) == 4  # sample 2 of each input was wrong and is corrected; samples 0 and 1 come back as they were
    for chosen, rejected, by, question in pairs:
        a, b = map(int, re.findall(r"\d+", question))
        assert by == "revision" and chosen.endswith(f"#### {a + b}") and chosen[:9] == rejected[:9]
    unchanged = store_rows(spec, "select reason from decisions where stage = 'pairs:fix' and not kept")
    assert len(unchanged) == 8 and all("unchanged" in r for (r,) in unchanged)


def self_spec(tmp_path: Path, base_url: str, keep: str) -> Path:
    spec = write_spec(tmp_path, base_url, "")
    text = spec.read_text().replace("strategy: label", "strategy: self").replace("    n: 3\n", f"    n: 3\n{keep}")
    spec.write_text(text)
    return spec


def test_self_consistency_majority_and_verified(tmp_path):
    def script(body):
        a, b = map(int, re.findall(r"\d+", body["messages"][-1]["content"]))
        i = body["seed"] - 1
        if a == 2:  # three different answers: no majority
            return f"#### {a + b + i}"
        if a == 6:
            return "I am not sure." if i == 1 else "#### 7"
        if a == 10:  # a wrong majority: 18, 18, 17 (the reference says 17)
            return f"so \\boxed{{{18 if i < 2 else 17}}}"
        return f"#### {a + b + (1 if i == 2 else 0)}"

    with ScriptedServer(script) as server:
        (tmp_path / "m").mkdir()
        spec = self_spec(tmp_path / "m", server.base_url, "    keep: majority\n")
        quiet_run(spec)
    kept = store_rows(spec, "select question, solution_answer from attempt order by 1, 2")
    assert kept == [("What is 10 plus 7?", "18"), ("What is 10 plus 7?", "18"), ("What is 4 plus 4?", "8"),
                    ("What is 4 plus 4?", "8"), ("What is 6 plus 1?", "7"), ("What is 6 plus 1?", "7")]
    dropped = dict(store_rows(spec, "select o.text, d.reason from decisions d join outputs o on o._id = d.row_id "
                                    "where d.stage = 'self:attempt' and not d.kept"))
    assert len(dropped) == 6
    assert dropped["#### 5"].startswith("no majority: answers 5 (1), 6 (1), 7 (1) tie")
    assert dropped["#### 9"] == "answer 9 disagrees with the majority answer 8 (2 of 3)"
    assert dropped["I am not sure."] == "no final answer found"
    assert dropped["so \\boxed{17}"].startswith("answer 17 disagrees with the majority answer 18")

    with ScriptedServer(script) as server:
        (tmp_path / "v").mkdir()
        spec = self_spec(tmp_path / "v", server.base_url, "    keep: verified\n    reference: answer\n")
        quiet_run(spec)
    kept = store_rows(spec, "select question, solution_answer from attempt order by 1, 2")
    assert kept == [("What is 10 plus 7?", "17"), ("What is 2 plus 3?", "5"), ("What is 4 plus 4?", "8"),
                    ("What is 4 plus 4?", "8"), ("What is 6 plus 1?", "7"), ("What is 6 plus 1?", "7")]
    reasons = {r for (r,) in store_rows(spec, "select reason from decisions where not kept")}
    assert "answer 18 != reference 17" in reasons and "no final answer found" in reasons


@pytest.mark.parametrize("steps,message", [
    (GRADE.replace("input: attempt", "input: problems"), "a judge reads an earlier generation step"),
    (GRADE + "    pairs: {by: verdict}\n", "needs `pairwise: true`"),
    (GRADE + "    revise: true\n    pairs: {by: score}\n", "always pairs"),
    (GRADE.replace("output: score", "output: question"), "clashes"),
    (GRADE + "    prompt: '{{ nope }}'\n", "`nope`"),
])
def test_judge_spec_errors(tmp_path, steps, message):
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", steps)
    with pytest.raises(UserError, match=re.escape(message)):
        build_plan(load_spec(spec))


def test_self_verified_needs_a_reference(tmp_path):
    spec = self_spec(tmp_path, "http://127.0.0.1:9/v1", "    keep: verified\n")
    with pytest.raises(UserError, match="needs `reference`"):
        build_plan(load_spec(spec))


def test_json_verdicts_are_constrained_and_parsed(tmp_path):
    def script(body):
        prompt = body["messages"][-1]["content"]
        if not prompt.startswith("You are a strict grader"):
            return student(body)
        sample = int(re.search(r"attempt (\d)", section(prompt, "Response")).group(1))
        return json.dumps({"reason": f"sample {sample}", "score": 3 + sample})

    with ScriptedServer(script) as server:
        spec = write_spec(tmp_path, server.base_url, GRADE + "    verdict_format: json\n    scale: [0, 5]\n")
        quiet_run(spec)
        judged = [b for b in server.bodies if "grader" in b["messages"][-1]["content"]]
    schema = judged[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["score"] == {"type": "integer", "enum": [0, 1, 2, 3, 4, 5]}
    assert list(schema["properties"]) == ["reason", "score"]
    assert schema["properties"]["reason"] == {"type": "string", "maxLength": 300}
    assert judged[0]["messages"][-1]["content"].endswith('"score": <a number from 0 to 5>}.')
    rows = store_rows(spec, "select score, score_reason from grade order by 1")
    assert [r[0] for r in rows] == [3.0] * 4 + [4.0] * 4 + [5.0] * 4 and rows[0][1] == "sample 0"


def test_student_folder_identity_follows_its_weights(tmp_path):
    """A teacher pointing at a local (student) folder: retraining it in place changes every cache key."""
    from datagen.spec.models import TransformersTeacherSpec
    from datagen.teachers import teacher_identity

    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights-1" * 1000)
    spec = TransformersTeacherSpec(backend="transformers", model="./student")
    first = teacher_identity(spec, tmp_path)
    assert first["model"] == str(folder.resolve()) and len(first["weights"]) == 16
    (folder / "datagen_train.json").write_text("{}")  # settings written beside the weights do not count
    (folder / "README.md").write_text("card")
    assert teacher_identity(spec, tmp_path) == first
    (folder / "model.safetensors").write_bytes(b"weights-2" * 1000)
    assert teacher_identity(spec, tmp_path)["weights"] != first["weights"]
    bundled = TransformersTeacherSpec(backend="transformers", model="bundled:smollm2-135m-instruct")
    assert "weights" not in teacher_identity(bundled, tmp_path)


def test_rubric_is_a_template_over_the_judged_row(tmp_path):
    scores = {(a, i): "Score: 5" for a in (2, 4, 10, 6) for i in range(3)}
    with ScriptedServer(score_script(scores)) as server:
        spec = write_spec(tmp_path, server.base_url, GRADE.replace(
            "rubric: Is the final answer correct?", "rubric: \"The right answer is {{ answer.split('####')[-1] | trim }}.\""))
        quiet_run(spec)
        criteria = {re.search(r"Criteria: (.*)", b["messages"][-1]["content"]).group(1) for b in server.bodies
                    if "grader" in b["messages"][-1]["content"]}
    assert criteria == {"The right answer is 5.", "The right answer is 8.", "The right answer is 17.",
                        "The right answer is 7."}
    bad = spec.read_text().replace("{{ answer.split", "{{ answr.split")
    spec.write_text(bad)
    with pytest.raises(UserError, match=r"steps\.1\.rubric: template uses `answr`"):
        build_plan(load_spec(spec))
