"""Secrets and the read-only query. A fake API key set in the environment is searched for in every file that a run,
`status`, `query`, `export`, `report` and their logs wrote, including an error a careless server sent back with the
key in it: zero hits. `datagen query` refuses every form of write, attach, copy, file access and extension."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen.cli import app
from tests.scripted_server import ScriptedServer

SECRET = "sk-fake-" + hashlib.sha256(b"datagen security test").hexdigest()[:32]


def write_spec(tmp_path: Path, base_url: str) -> Path:
    questions = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"} for i in range(12)]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: secure
teachers:
  t:
    backend: openai
    base_url: {base_url}
    model: scripted
    api_key_env: DATAGEN_FAKE_TEACHER_KEY
    max_attempts: 1
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: t
    input: problems
    prompt: "{{{{ question }}}}"
    max_failure_rate: 0.5
    output: solution
export:
  path: out/secure
""")
    return spec


def test_fake_key_is_in_no_file_the_run_export_and_logs_wrote(tmp_path):
    def script(body):
        if "3 plus" in body["messages"][-1]["content"]:
            return {"echo_auth": True}  # a 401 that repeats the key
        return "echo: " + body["messages"][-1]["content"]

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "DATAGEN_FAKE_TEACHER_KEY": SECRET}
    logs = tmp_path / "logs"
    logs.mkdir()
    with ScriptedServer(script) as server:
        spec = write_spec(work, server.base_url)
        commands = {
            "run": ["run", str(spec)],
            "status": ["status", str(spec)],
            "query": ["query", str(spec), "select key, status, error from requests", "--format", "json"],
            "export": ["export", str(spec)],
            "report": ["report", str(spec), "--out", str(work / "report.html")],
        }
        for name, args in commands.items():
            with (logs / f"{name}.out").open("w") as out, (logs / f"{name}.err").open("w") as err:
                proc = subprocess.run([sys.executable, "-m", "datagen.cli", *args], stdout=out, stderr=err, env=env,
                                      timeout=300, cwd=work)
            assert proc.returncode == 0, (name, (logs / f"{name}.err").read_text())
    # the key was used, and the server did send it back once
    assert set(server.auth) == {f"Bearer {SECRET}"}
    errors = json.loads((logs / "query.out").read_text())
    echoed = [r["error"] for r in errors if r["status"] == "failed"]
    assert len(echoed) == 1 and "invalid api key: Bearer [api key]" in echoed[0]
    assert "1 failed" in (logs / "status.out").read_text()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in written}
    assert {".duckdb", ".parquet", ".md", ".html", ".out", ".err"} <= kinds, kinds
    hits = [str(p) for p in written if SECRET.encode() in p.read_bytes() or SECRET[8:].encode() in p.read_bytes()]
    assert hits == []


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("readonly")
    with ScriptedServer() as server:
        spec = write_spec(tmp_path, server.base_url)
        spec.write_text(spec.read_text().replace("    api_key_env: DATAGEN_FAKE_TEACHER_KEY\n", ""))
        out = CliRunner().invoke(app, ["run", "-q", str(spec)])
        assert out.exit_code == 0, out.output
    return spec


def forms(tmp: Path) -> list[str]:
    other, target, ext = tmp / "other.duckdb", tmp / "stolen.csv", tmp / "evil.duckdb_extension"
    return [
        # writes
        "delete from requests", "insert into lineage values ('a', 'b', 'c')", "update requests set status = 'x'",
        "drop table requests", "create table x as select 1", "alter table requests add column x int",
        "create view v as select 1", "create macro m(a) as a", "create sequence s", "truncate requests",
        "with x as (select 1) delete from requests", "explain analyze delete from requests", "checkpoint",
        "vacuum", "begin transaction", "select 1; delete from requests",
        # attach and friends
        f"attach '{other}' as o", "attach ':memory:' as m", "detach secure", "use memory",
        # copy and export to files
        f"copy requests to '{target}'", f"copy (select * from requests) to '{target}' (format parquet)",
        f"explain analyze copy requests to '{target}'", f"export database '{tmp / 'dump'}'",
        # reading other files
        f"select * from read_csv('{tmp / 'problems.jsonl'}')", "select * from read_text('/etc/hostname')",
        "select * from read_json('/etc/hostname')", "select * from 'https://example.com/x.parquet'",
        # extensions and settings
        "install httpfs", "force install httpfs", "load httpfs", f"load '{ext}'",
        "set enable_external_access = true", "reset lock_configuration", "set lock_configuration = false",
        "pragma enable_profiling", "call pragma_version()",
    ]


def test_query_rejects_every_write_form(store, tmp_path):
    db = store.parent / "runs" / "secure.duckdb"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    rejected = 0
    for sql in forms(tmp_path):
        out = CliRunner().invoke(app, ["query", str(store), sql])
        assert out.exit_code == 2, (sql, out.output)
        assert out.stderr.startswith("error: ") and "Traceback" not in out.output, (sql, out.output)
        rejected += 1
    assert rejected >= 35
    assert not any(p.name in ("stolen.csv", "dump", "other.duckdb") for p in tmp_path.iterdir())
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # not a byte of the store changed
    ok = CliRunner().invoke(app, ["query", str(store), "select count(*) as n from solve", "-f", "json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout) == [{"n": 12}]
    for sql in ("summarize solve", "describe requests", "explain select 1", "from solve limit 1"):
        assert CliRunner().invoke(app, ["query", str(store), sql]).exit_code == 0, sql


def test_templates_cannot_reach_python(tmp_path):
    """The sandbox: no attribute access to internals, so no code execution from a spec."""
    from datagen.errors import UserError
    from datagen.templates import render

    for source in ["{{ question.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
                   "{{ cycler.__init__.__globals__.os.system('touch " + str(tmp_path / "pwned") + "') }}",
                   "{{ lipsum.__globals__['os'].popen('id').read() }}", '{{ "{0.__class__}".format(question) }}',
                   "{% set x = namespace() %}{{ x.__dict__ }}"]:
        with pytest.raises(UserError):
            render(source, {"question": "q"})
    assert not (tmp_path / "pwned").exists()
    assert render("{{ question | upper }} {{ demos | length }}", {"question": "q", "demos": [1, 2]}) == "Q 2"
