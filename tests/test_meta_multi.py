"""`strategy: meta` (meta-information synthesis) and several teachers per step, against a scripted teacher; and the
plan-time errors of the new keys."""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.errors import UserError
from datagen.api import run
from datagen.spec.load import load_spec, load_spec_text
from datagen.api import plan as build_plan
from tests.scripted_server import ScriptedServer
from tests.test_run_scripted import store_rows

TOPICS = ["fractions", "percentages", "fractions", "speed"]  # "fractions" twice: one value, its first row


def curate_spec(tmp_path: Path, base_url: str, combine: str = "combine: product", seed: int = 5, extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    rows = "\n".join(f"      - {{topic: {t}, n: {i}}}" for i, t in enumerate(TOPICS))
    spec.write_text(f"""\
name: cur
seed: {seed}
teachers:
  t: {{backend: openai, base_url: "{base_url}", model: scripted, max_attempts: 1}}
sources:
  topics:
    inline:
{rows}
steps:
  - name: problems
    strategy: meta
    teacher: t
    meta:
      topic: {{from: topics, column: topic}}
      difficulty: [easy, hard]
      level: [1, 2]
    {combine}
    per_combination: 2
    max_failure_rate: 0.9
    prompt: "Write a {{{{ difficulty }}}} level {{{{ level }}}} problem about {{{{ topic }}}}."
    output: question
{extra}
""")
    return spec


def problem_script(body):
    text = body["messages"][-1]["content"]
    if "hard level 2 problem about speed" in text:
        return {"status": 500, "body": {"error": "no"}}
    return "Q: " + text


def test_meta_product_rows_lineage_and_coverage(tmp_path):
    with ScriptedServer(problem_script) as server:
        spec = curate_spec(tmp_path, server.base_url)
        summary = run(load_spec_text(spec.read_text(), spec), log=lambda m: None)
        # 3 topics x 2 difficulties x 2 levels, 2 samples each; the 2 samples of (speed, hard, 2) fail
        assert summary.steps[0].planned == 24 and len(server.bodies) == 24 and summary.steps[0].failed == 2
    rows = store_rows(spec, "select topic, difficulty, level, question, _sample_index from problems")
    assert len(rows) == 22
    expected = set(itertools.product(["fractions", "percentages", "speed"], ["easy", "hard"], [1, 2])) - \
        {("speed", "hard", 2)}
    assert {r[:3] for r in rows} == expected
    assert all(q == f"Q: Write a {d} level {lv} problem about {t}." and isinstance(lv, int) for t, d, lv, q, _ in rows)
    # lineage: the combination is the input; a value read from a source links to the first row that has it
    topic_ids = dict(store_rows(spec, "select n, _id from topics"))
    meta = store_rows(spec, "select p.topic, l.parent_id from problems p join lineage l on l.child_id = p._id "
                            "and l.role = 'meta'")
    assert len(meta) == 22 and {(t, pid) for t, pid in meta} == {("fractions", topic_ids[0]),
                                                                ("percentages", topic_ids[1]), ("speed", topic_ids[3])}
    inputs = store_rows(spec, "select count(*) from problems p join _meta_problems m on m._id = p._parent_id "
                              "and m.topic = p.topic and m.level = p.level")
    assert inputs[0][0] == 22
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "status", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "12 of 12 combinations requested, 1 of them without rows" in out.stdout
    assert "topic: fractions 8, percentages 8, speed 6" in out.stdout
    assert "difficulty: easy 12, hard 10" in out.stdout and "level: 1 12, 2 10" in out.stdout
    assert "empty cells: speed, hard, 2" in out.stdout


def test_meta_sample_draws_exactly_count_combinations_with_the_seed(tmp_path):
    picked = {}
    for seed in (5, 5, 6):
        with ScriptedServer(problem_script) as server:
            folder = tmp_path / f"run{len(picked)}_{seed}"
            folder.mkdir()
            spec = curate_spec(folder, server.base_url, combine="combine: sample\n    count: 5", seed=seed)
            run(load_spec_text(spec.read_text(), spec), log=lambda m: None)
        combos = store_rows(spec, "select topic, difficulty, level from _meta_problems order by all")
        picked.setdefault(seed, []).append(combos)
    first, again = picked[5]
    assert first == again and len(first) == 5 and len(set(first)) == 5
    # the documented draw: numbers p of the product in meta order (topic, difficulty, level; values in order of
    # first appearance), random.Random("<seed>\0<step>\0combine").sample(range(12), count)
    product = list(itertools.product(["fractions", "percentages", "speed"], ["easy", "hard"], [1, 2]))
    numbers = random.Random("5\0problems\0combine").sample(range(12), 5)
    assert first == sorted(product[p] for p in numbers)
    assert picked[6][0] != first


def multi_spec(tmp_path: Path, base_url: str, vote: str = "vote: majority", teachers: str = "[a, b, c]") -> Path:
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in ("one", "two", "three")))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: multi
teachers:
  a: {{backend: openai, base_url: "{base_url}", model: ma}}
  b: {{backend: openai, base_url: "{base_url}", model: mb}}
  c: {{backend: openai, base_url: "{base_url}", model: mc}}
sources:
  q: {{path: q.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: {teachers}
    input: q
    prompt: "{{{{ question }}}}"
    output: solution
    agreement: {{column: solution, extract: "####\\\\s*(-?[0-9]+)"}}
    {vote}
""")
    return spec


# question -> teacher model -> reply: "one" 2 of 3 agree, "two" all differ (a tie: teacher a's answer wins),
# "three" only c gives an answer
REPLIES = {"one": {"ma": "so #### 7", "mb": "#### 42 and then #### 41", "mc": "#### 41"},
           "two": {"ma": "#### 1", "mb": "#### 2", "mc": "#### 3"},
           "three": {"ma": "no idea", "mb": "", "mc": "#### 5"}}


def multi_script(body):
    return REPLIES[body["messages"][-1]["content"]][body["model"]]


def test_multi_teacher_agreement_and_majority_vote(tmp_path):
    with ScriptedServer(multi_script) as server:
        spec = multi_spec(tmp_path, server.base_url)
        run(load_spec_text(spec.read_text(), spec), log=lambda m: None)
        # every input went to every teacher, once
        assert sorted((b["model"], b["messages"][-1]["content"]) for b in server.bodies) == \
            sorted(itertools.product(["ma", "mb", "mc"], ["one", "two", "three"]))
    kept = store_rows(spec, "select question, _teacher, solution, agreement from solve order by question")
    assert kept == [("one", "b", "#### 42 and then #### 41", pytest.approx(2 / 3)),  # last match: 41, as c says
                    ("three", "c", "#### 5", pytest.approx(1 / 3)),
                    ("two", "a", "#### 1", pytest.approx(1 / 3))]
    dropped = store_rows(spec, "select o._teacher, o.text, d.reason, d.duplicate_of, d.score from decisions d "
                               "join outputs o on o._id = d.row_id where d.stage = 'solve' and not d.kept "
                               "order by o.text")
    assert len(dropped) == 6
    ids = dict(store_rows(spec, "select _teacher || question, _id from solve"))
    by_text = {t: (teacher, reason, dup) for teacher, t, reason, dup, _ in dropped}
    assert by_text["#### 41"][2] == ids["bone"] and "an earlier row with it is kept" in by_text["#### 41"][1]
    assert by_text["so #### 7"][2] == ids["bone"] and "outvoted" in by_text["so #### 7"][1]
    assert by_text["no idea"][2] == ids["cthree"] and by_text["no idea"][1].startswith("no answer")


def test_agreement_without_vote_keeps_every_row(tmp_path):
    with ScriptedServer(multi_script) as server:
        spec = multi_spec(tmp_path, server.base_url, vote="")
        run(load_spec_text(spec.read_text(), spec), log=lambda m: None)
        spec.write_text(spec.read_text().replace("[a, b, c]", "[a, b]"))
        server.reset()
        run(load_spec_text(spec.read_text(), spec), log=lambda m: None)
        assert server.bodies == []  # each teacher's rows are its own: dropping c regenerates nothing
    rows = store_rows(spec, "select question, _teacher, agreement from solve order by 1, 2")
    assert rows == [("one", "a", 0.5), ("one", "b", 0.5), ("three", "a", 0.0), ("three", "b", 0.0),
                    ("two", "a", 0.5), ("two", "b", 0.5)]


BASE = """\
name: bad
teachers:
  a: {backend: openai, base_url: "http://127.0.0.1:9/v1", model: m}
  b: {backend: openai, base_url: "http://127.0.0.1:9/v1", model: m}
sources:
  s: {inline: [{text: hello, topic: x}]}
steps:
"""

BAD_STEPS = [
    ("- {name: e, strategy: expand, teacher: [a, b], demos: {from: s}, prompt: x, target: 3}",
     "steps.0.teacher", "several teachers for one step are for `strategy: label`"),
    ("- {name: e, strategy: expand, teacher: a, demos: {from: s, include_generated: true}, prompt: x, target: 3, "
     "output: task}", "steps.0.output", "`output` must be one of its columns"),
    ("- {name: e, strategy: expand, teacher: a, demos: {from: s}, prompt: '{{ text }}', target: 3}",
     "steps.0.prompt", "template uses `text`"),
    ("- {name: e, strategy: expand, teacher: a, demos: {from: s}, prompt: x, target: 3, novelty: {max_cosine: 0.9}}",
     "steps.0.novelty", "set novelty.column to one of: text, topic"),
    ("- {name: e, strategy: expand, teacher: a, demos: {from: s, as: turns, assistant: text}, prompt: x, target: 3}",
     "steps.0.demos.as", "remove `as: turns`"),
    ("- {name: c, strategy: meta, teacher: a, meta: {d: [1, 2]}, combine: sample, prompt: '{{ d }}'}",
     "steps.0.combine", "set count"),
    ("- {name: c, strategy: meta, teacher: a, meta: {d: [1, 2]}, combine: sample, count: 3, prompt: '{{ d }}'}",
     "steps.0.count", "count 3 is more than the 2 combinations"),
    ("- {name: c, strategy: meta, teacher: a, meta: {d: {from: s, column: nope}}, prompt: '{{ d }}'}",
     "steps.0.meta.d.column", "`nope` is not a column of `s`"),
    ("- {name: c, strategy: meta, teacher: a, meta: {d: [1]}, prompt: '{{ e }}'}",
     "steps.0.prompt", "template uses `e`"),
    ("- {name: l, strategy: label, teacher: [a, a], input: s, prompt: x}",
     "steps.0.teacher.1", "listed twice"),
    ("- {name: l, strategy: label, teacher: [a, zz], input: s, prompt: x}",
     "steps.0.teacher.1", "no teacher named `zz`"),
    ("- {name: l, strategy: label, teacher: [a, b], input: s, prompt: x, vote: majority}",
     "steps.0.vote", "needs `agreement"),
    ("- {name: l, strategy: label, teacher: a, input: s, prompt: x, agreement: {column: output, extract: 'x'}}",
     "steps.0.agreement", "list several teachers"),
    ("- {name: l, strategy: label, teacher: [a, b], input: s, prompt: x, agreement: {column: output, extract: '('}}",
     "steps.0.agreement.extract", "not a valid regular expression"),
    ("- {name: l, strategy: label, teacher: [a, b], input: s, prompt: x, agreement: {column: zz, extract: 'x'}}",
     "steps.0.agreement.column", "`zz` is not a column"),
]


@pytest.mark.parametrize("step, where, message", BAD_STEPS)
def test_bad_new_keys_name_the_key_and_the_fix(step, where, message):
    with pytest.raises(UserError) as err:
        build_plan(load_spec_text(BASE + "  " + step + "\n"))
    text = str(err.value)
    assert text.startswith(where + ":") and message in text and re.search(r"\(spec\.yaml:\d+:\d+\)", text), text


def test_the_old_name_curate_still_works_and_the_warning_names_meta(tmp_path):
    """`strategy: curate` is read as `meta`, and `datagen validate` warns with the new word and the line to change."""
    spec = curate_spec(tmp_path, "http://127.0.0.1:9/v1")
    spec.write_text(spec.read_text().replace("strategy: meta", "strategy: curate"))
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "validate", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "steps.0.strategy: `curate` is the old name of `meta`" in out.stderr
    assert "write `strategy: meta` (spec.yaml:14:5)" in out.stderr
    assert load_spec(spec).spec.steps[0].strategy == "meta"
