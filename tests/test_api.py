"""The Python API (specs/python.md) as a notebook uses it: from a coroutine inside a running event loop, with a dict
spec, an HTTP teacher on 127.0.0.1 (the scripted server), and results as objects: a RunSummary, an Arrow table, a
`datasets.Dataset`, an export folder `datasets` loads."""

from __future__ import annotations

import _thread
import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import datagen
from datagen.errors import UserError
from tests.scripted_server import ScriptedServer

QUESTIONS = [f"What is {a} times {b}?" for a, b in [(2, 3), (4, 5), (6, 7), (8, 9)]]


def spec_dict(base_url: str, **extra) -> dict:
    """The YAML's shape as a dict; `problems.jsonl` is relative, so it resolves against the working directory."""
    spec = {
        "name": "nb",
        "seed": 3,
        "teachers": {"t": {"backend": "openai", "base_url": base_url, "model": "scripted", "max_concurrency": 2,
                           "sampling": {"temperature": 0.5, "max_tokens": 16}}},
        "sources": {"problems": {"path": "problems.jsonl"}},
        "steps": [{"name": "solve", "strategy": "label", "teacher": "t", "input": "problems",
                   "prompt": "Q: {{ question }}", "n": 2, "output": "solution"}],
        "curation": {"input": "solve", "filters": [{"type": "regex", "column": "solution", "must_match": "echo"}],
                     "select": {"n": 3}},
        "export": {"path": "out/nb"},
    }
    spec.update(extra)
    return spec


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_function_from_a_coroutine_in_a_running_loop(workdir):
    with ScriptedServer() as server:
        spec = spec_dict(server.base_url)

        async def notebook_cell():
            asyncio.get_running_loop()  # what a notebook has: the HTTP teacher's own loop cannot run in this thread
            summary = datagen.run(spec)
            return (summary, datagen.status(spec), datagen.query(spec, "select * from solve order by _id"),
                    datagen.load(spec), datagen.load(spec, "solve"), datagen.export(spec))

        summary, status, table, curated, solve, exported = asyncio.run(notebook_cell())
    assert summary.steps[0].generated == 8 and summary.steps[0].failed == 0
    assert [f["rows_out"] for f in summary.funnel] == [8, 3]
    assert status["steps"][0]["done"] == 8 and status["funnel"][-1]["rows_out"] == 3
    # query: an Arrow table; `_messages` holds the rendered request each row answered
    assert isinstance(table, pa.Table) and table.num_rows == 8
    for row in table.to_pylist():
        assert json.loads(row["_messages"]) == [{"role": "user", "content": f"Q: {row['question']}"}]
        assert row["solution"] == "echo: " + f"Q: {row['question']}"[::-1]
    # load: datasets.Dataset of the curated rows, in selection order
    import datasets

    assert isinstance(curated, datasets.Dataset) and curated.num_rows == 3
    con = duckdb.connect(str(workdir / "runs" / "nb.duckdb"), read_only=True)
    want = [r[0] for r in con.execute("select _id from curated").fetchall()]
    con.close()
    assert curated["_id"] == want and set(curated.column_names) >= {"question", "solution", "_messages"}
    assert solve.num_rows == 8
    # export: the store's relative path resolved against the working directory; datasets loads the folder
    assert exported.path == (workdir / "out" / "nb").resolve()
    loaded = datasets.load_dataset(str(exported.path), split="train")
    assert loaded.num_rows == 3 and loaded[0]["messages"][-1]["role"] == "assistant"


def test_run_seconds_are_one_figure_in_the_table_the_store_and_the_card(workdir):
    with ScriptedServer(lambda body: {"text": "echo", "delay": 0.1}) as server:
        spec = spec_dict(server.base_url)
        summary = datagen.run(spec)
        exported = datagen.export(spec)
    con = duckdb.connect(str(workdir / "runs" / "nb.duckdb"), read_only=True)
    stored = con.execute("select sum(seconds) from requests where step = 'solve'").fetchall()[0][0]
    con.close()
    step = summary.steps[0].seconds
    # 8 requests of 0.1 s, 2 at a time: about 0.4 s of wall time, not 0.8 s of summed latencies
    assert step == pytest.approx(stored) and 0.35 < step < summary.seconds
    card = (exported.path / "README.md").read_text()
    total = next(line for line in card.splitlines() if line.startswith("| **total**"))
    assert float(total.split("|")[-3]) == pytest.approx(stored, abs=0.05)  # one decimal; then the cost column


def test_ctrl_c_in_a_notebook_keeps_finished_samples(workdir):
    with ScriptedServer(lambda body: {"text": "slow", "delay": 0.4}) as server:
        spec = spec_dict(server.base_url, sources={"problems": {"inline": [{"question": f"q{i}"} for i in range(20)]}})
        threading.Timer(1.5, _thread.interrupt_main).start()  # what "interrupt kernel" does

        async def cell():
            return datagen.run(spec)

        with pytest.raises(KeyboardInterrupt):
            asyncio.run(cell())
    workers = [t for t in threading.enumerate() if t.name.startswith("datagen-")]
    for t in workers:
        t.join(5)  # it has set its event; let it finish exiting
    assert not any(t.is_alive() for t in workers), "the worker must have ended"
    con = duckdb.connect(str(workdir / "runs" / "nb.duckdb"), read_only=True)
    done = con.execute("select count(*) from requests where status = 'done'").fetchall()[0][0]
    status = con.execute("select status from _runs order by started_at desc limit 1").fetchall()[0][0]
    con.close()
    assert 0 < done < 40 and status == "interrupted"


def test_dict_spec_errors_name_the_key_path_without_a_line(workdir):
    bad = spec_dict("http://127.0.0.1:9/v1")
    bad["teachers"]["t"]["sampling"]["top_p"] = 1.5
    with pytest.raises(UserError) as err:
        datagen.validate(bad)
    assert "teachers.t.sampling.top_p: top_p must be in (0, 1], got 1.5" in str(err.value)
    assert "(" not in str(err.value).split("got 1.5")[1]  # no `(spec.yaml:14:7)`
    bad = spec_dict("http://127.0.0.1:9/v1")
    bad["steps"][0]["input"] = "nope"
    with pytest.raises(UserError) as err:
        datagen.validate(bad)
    assert str(err.value).startswith("steps.0.input: `nope` is not a source or an earlier step") and \
        not str(err.value).endswith(")")


def test_import_is_light_and_api_names_survive_their_submodules():
    code = ("import sys, datagen; heavy = [m for m in ('duckdb', 'torch', 'vllm', 'datasets') if m in sys.modules]; "
            "import datagen.publish.export, datagen.publish.status, datagen.pipeline.loop; "
            "from datagen.publish.export import export_dir; "
            "print(heavy, callable(datagen.export), callable(datagen.status), datagen.run.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[] True True datagen.api", out.stderr


def test_outside_event_loop_uses_a_worker_only_under_a_loop():
    from datagen.pipeline.threads import outside_event_loop

    here = threading.current_thread().name
    assert outside_event_loop(lambda: threading.current_thread().name) == here

    async def cell():
        return outside_event_loop(lambda: threading.current_thread().name)

    assert asyncio.run(cell()).startswith("datagen-")
    with pytest.raises(ValueError, match="boom"):
        asyncio.run(_raises())


async def _raises():
    from datagen.pipeline.threads import outside_event_loop

    def boom():
        raise ValueError("boom")

    return outside_event_loop(boom)
