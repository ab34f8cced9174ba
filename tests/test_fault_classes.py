"""Whose fault a failed request is: a request fault (a 400, a reply that does not parse, a refusal) stays failed on a
re-run unless --retry-failed; a provider fault (5xx, a truncated body, bad credentials) is asked again; rows from
before the class was recorded are asked again too. Against the scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import duckdb
import pytest

from datagen.api import run
from datagen.spec.load import load_spec
from datagen.store import stats
from datagen.teachers.base import PROVIDER, REQUEST, fault_of_status
from tests.scripted_server import ScriptedServer
from tests.test_run_scripted import make_spec, store_rows

FMT = ("    response_format:\n      json_schema: {type: object, properties: {total: {type: integer}}, "
       "required: [total]}\n    max_failure_rate: 0.9\n    n: 1")


def quiet(spec, **kw):
    return run(load_spec(spec), log=lambda m: None, **kw)


def test_http_statuses_are_classed():
    assert [fault_of_status(s) for s in (400, 413, 422)] == [REQUEST] * 3
    assert [fault_of_status(s) for s in (401, 403, 404, 408, 429, 500, 503, 529)] == [PROVIDER] * 8


def test_each_failure_is_classed_and_a_rerun_asks_only_the_providers_again(tmp_path):
    broken = {"on": True}

    def script(body):
        q = body["messages"][-1]["content"]
        if not broken["on"]:
            return '{"total": 1}'
        return {"What is 2 plus 3?": {"status": 400, "body": {"error": "context too long"}},
                "What is 4 plus 4?": "not json at all",  # the strategy cannot parse it
                "What is 10 plus 7?": {"status": 500, "body": {"error": "overloaded"}},
                "What is 6 plus 1?": {"raw": '{"choices": [{"message": {"content": "cut'},  # a truncated body
                "What is 9 plus 9?": {"status": 401, "body": {"error": "bad key"}},
                }.get(q.removeprefix("Q: "), '{"total": 42}')

    with ScriptedServer(script) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts=FMT)
        spec.write_text(spec.read_text().replace("    n: 2\n", ""))
        first = quiet(spec)
        assert (first.steps[0].generated, first.steps[0].failed) == (1, 5)
        got = dict(store_rows(spec, "select split_part(json_extract_string(messages, '$[5].content'), 'Q: ', 2), "
                                    "error_kind from requests where status = 'failed'"))
        assert got == {"What is 2 plus 3?": "request", "What is 4 plus 4?": "request", "What is 10 plus 7?":
                       "provider", "What is 6 plus 1?": "provider", "What is 9 plus 9?": "provider"}
        assert store_rows(spec, "select count(*) from requests where status = 'done' and error_kind is not null") \
            == [(0,)]
        broken["on"] = False
        server.reset()
        second = quiet(spec)
        asked = sorted(b["messages"][-1]["content"] for b in server.bodies)
        assert asked == ["Q: What is 10 plus 7?", "Q: What is 6 plus 1?", "Q: What is 9 plus 9?"]
        assert second.steps[0].kept_failed == 2
        server.reset()
        quiet(spec, retry_failed=True)
        assert sorted(b["messages"][-1]["content"] for b in server.bodies) == ["Q: What is 2 plus 3?",
                                                                             "Q: What is 4 plus 4?"]
    assert store_rows(spec, "select count(*) from solve")[0][0] == 6


def test_rows_from_before_the_class_count_as_provider_faults(tmp_path):
    with ScriptedServer(lambda body: {"status": 400, "body": {"error": "no"}}) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts="    max_failure_rate: 1")
        quiet(spec)
        con = duckdb.connect(str(load_spec(spec).store_path))
        con.execute("UPDATE requests SET error_kind = NULL WHERE key IN (SELECT key FROM requests LIMIT 3)")
        status = stats.faults(con, "solve")
        con.close()
        assert {k: v["count"] for k, v in status.items()} == {"request": 9, "provider": 3}
        server.reset()
        quiet(spec)
        assert len(server.bodies) == 3  # as before the class existed: a re-run asks them again


def test_faults_read_a_store_that_has_no_class_column_yet():
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE requests (key VARCHAR, status VARCHAR, error VARCHAR)")
    con.execute("CREATE TABLE _plan (step VARCHAR, key VARCHAR)")
    con.execute("INSERT INTO requests VALUES ('a', 'failed', 'HTTP 500'), ('b', 'failed', 'HTTP 500'), "
                "('c', 'done', NULL)")
    con.execute("INSERT INTO _plan VALUES ('s', 'a'), ('s', 'b'), ('s', 'c')")
    assert stats.faults(con, "s") == {"provider": {"count": 2, "top_errors": [("HTTP 500", 2)]}}


@pytest.mark.parametrize("rate, fails", [(0.5, True), (0.9, False)])
def test_a_rerun_that_asks_nothing_still_answers_to_max_failure_rate(tmp_path, rate, fails):
    """Kept request faults count at the step's end (over every finished request), so a re-run of a step that
    failed fails again instead of passing by not asking."""
    from datagen.errors import RunFailed

    def script(body):
        return "fine" if body["messages"][-1]["content"] == "Q: What is 2 plus 3?" else {"status": 400}

    with ScriptedServer(script) as server:
        spec = make_spec(tmp_path, server.base_url, step_opts=f"    max_failure_rate: {rate}")
        if fails:
            with pytest.raises(RunFailed):
                quiet(spec)
            server.reset()
            with pytest.raises(RunFailed, match="10 failed by their own fault on an earlier run"):
                quiet(spec)
            assert server.bodies == []
        else:
            quiet(spec)
            server.reset()
            assert quiet(spec).steps[0].kept_failed == 10 and server.bodies == []
