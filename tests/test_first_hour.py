"""What a new user hits in the first hour: `validate` warnings and the curation/export plan, `run --limit N` in a
store of its own, the judge's verdict constrained to JSON by default, and the card's copy of the spec."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from typer.testing import CliRunner

import datagen
from datagen.cli import app
from tests.scripted_server import ScriptedServer
from tests.test_run_scripted import PROBLEMS, make_spec

def write_spec(tmp_path: Path, base_url: str, extra: str = "", teacher: str = "") -> Path:
    """test_run_scripted's spec: 6 problems, a system prompt, 2 demos as turns, n=2, output `solution`."""
    return make_spec(tmp_path, base_url, extra_step=extra, teacher_opts=teacher)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_validate_prints_the_curation_and_export_plan_and_warns(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAGEN_FIRST_HOUR_KEY", raising=False)
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", extra="""\
curation:
  input: solve
  filters: [{type: regex, column: solution, must_match: "####"}]
  select: {n: 100}
export: {format: prompt_completion, path: "out/{name}"}
""", teacher="    api_key_env: DATAGEN_FIRST_HOUR_KEY")
    out = cli("validate", str(spec))
    assert out.exit_code == 0, out.output
    assert "  curation of solve: filter regex on solution -> select 100 -> curated" in out.stdout
    assert f"  export: curated as prompt_completion -> {tmp_path / 'out' / 't'}" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, out.stderr
    assert "teachers.t.api_key_env" in out.stderr and "DATAGEN_FIRST_HOUR_KEY is not set" in out.stderr
    assert "curation.select.n: 100 rows asked for, but `solve` can hold at most 12" in out.stderr
    assert "spec.yaml:" in warnings[0] and "spec.yaml:" in warnings[1]


def test_run_limit_tries_the_first_rows_in_a_store_of_its_own(tmp_path):
    with ScriptedServer() as server:
        spec = write_spec(tmp_path, server.base_url)
        out = cli("run", "--limit", "2", str(spec))
        assert out.exit_code == 0, out.output
        assert len(server.bodies) == 4  # 2 inputs x n=2
    assert "--limit 2: the first 2 rows" in out.stdout and "t.limit2.duckdb" in out.stdout
    assert (tmp_path / "runs" / "t.limit2.duckdb").exists() and not (tmp_path / "runs" / "t.duckdb").exists()
    questions = {m["messages"][-1]["content"] for m in server.bodies}
    assert questions == {"Q: " + PROBLEMS[0]["question"], "Q: " + PROBLEMS[1]["question"]}
    status = cli("status", "--limit", "2", str(spec))
    assert status.exit_code == 0 and "solve: 4 done, 0 failed, 0 pending of 4" in status.stdout


def test_a_judge_constrains_its_verdict_to_json_by_default(tmp_path):
    judge = """\
  - name: grade
    strategy: judge
    teacher: t
    input: solve
    rubric: Is the answer right?
    output: score
"""

    def script(body):
        if "response_format" in body:
            return json.dumps({"reason": "fine", "score": 7})
        return "#### 5"

    with ScriptedServer(script) as server:
        spec = write_spec(tmp_path, server.base_url, extra=judge)
        summary = datagen.run(spec)
        graded = [b for b in server.bodies if "response_format" in b]
    assert summary.steps[1].generated == 12 and summary.steps[1].failed == 0
    assert len(graded) == 12
    schema = graded[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["reason", "score"] and "Reply with a JSON object" in \
        graded[0]["messages"][-1]["content"]
    # transformers cannot constrain output: its judge asks for "Score: N" text (and no model loads to plan it)
    text = spec.read_text().replace("    backend: openai\n    base_url: " + server.base_url + "\n",
                                    "    backend: transformers\n").replace("    max_attempts: 2\n", "")
    spec.write_text(text)
    planned = datagen.validate(spec).step("grade").spec
    assert planned.verdict_format == "text"


def test_the_cards_copy_of_the_spec_names_the_export_folder(tmp_path):
    with ScriptedServer() as server:
        spec = write_spec(tmp_path, server.base_url, extra='export: {path: "out/{name}"}\n')
        datagen.run(spec)
        card = (datagen.export(spec).path / "README.md").read_text()
    assert "{name}" not in card and "  path: t\n" in card
    con = duckdb.connect(str(tmp_path / "runs" / "t.duckdb"), read_only=True)
    asked = con.execute("select _messages from solve limit 1").fetchall()[0][0]
    con.close()
    # the system prompt, two demo turns, then the prompt
    assert [m["role"] for m in json.loads(asked)] == ["system", "user", "assistant", "user", "assistant", "user"]
