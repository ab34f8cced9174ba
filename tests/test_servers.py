"""An HTTP teacher over several servers (`base_url` as a list): the least-loaded server gets each attempt, a server
that fails repeatedly is paused while the others carry on, `requests.worker` says which server made each sample, and
the list's order is not part of the cache key."""

from __future__ import annotations

import itertools
import json
import threading

from datagen.api import run
from datagen.spec.load import load_spec, load_spec_text
from datagen.teachers import teacher_identity
from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all
from datagen.teachers.openai_teacher import OpenAITeacher
from tests.scripted_server import ScriptedServer, echo_script
from tests.test_run_scripted import store_rows


def half_failing():
    """Fails half its requests, three in a row then three answered: enough in a row to be paused."""
    pattern = itertools.cycle([True, True, True, False, False, False])
    lock = threading.Lock()

    def script(body):
        with lock:
            fail = next(pattern)
        return {"status": 503, "body": {"error": "overloaded"}} if fail else echo_script(body)
    return script


def test_a_failing_server_is_paused_and_every_sample_is_done():
    with ScriptedServer() as good, ScriptedServer(half_failing()) as bad:
        teacher = OpenAITeacher("t", base_url=[good.base_url, bad.base_url], model="scripted", api_key=None,
                                max_concurrency=4, max_attempts=6, backoff_base_s=0.01, backoff_max_s=0.05)
        requests = [GenRequest([{"role": "user", "content": f"q{i}"}], [f"k{i}"], [0]) for i in range(60)]
        out = generate_all(teacher, requests, GenOptions(Sampling(temperature=0, max_tokens=8)))
    assert all(s.error is None for r in out for s in r), [s.error for r in out for s in r if s.error]
    assert [r[0].text for r in out] == [f"echo: {f'q{i}'[::-1]}" for i in range(60)]
    good_stats, bad_stats = teacher.servers.servers
    assert len(good.bodies) > 0 and len(bad.bodies) > 0
    assert bad_stats.pauses >= 1 and good_stats.pauses == 0
    # while paused the bad server gets nothing, so it served (answered well) fewer than the good one
    assert bad_stats.served < good_stats.served
    assert {s.worker for r in out for s in r} <= {good_stats.label, bad_stats.label}


def test_run_records_the_worker_and_the_list_order_is_not_in_the_key(tmp_path):
    problems = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(20)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    with ScriptedServer() as a, ScriptedServer() as b:
        text = f"""\
name: servers
teachers:
  t: {{backend: openai, model: scripted, base_url: ["{a.base_url}", "{b.base_url}"], max_concurrency: 4}}
sources:
  p: {{path: p.jsonl}}
steps:
  - {{name: solve, strategy: label, teacher: t, input: p, prompt: "{{{{ question }}}}", output: y}}
"""
        spec = tmp_path / "spec.yaml"
        spec.write_text(text)
        run(load_spec(spec), log=lambda m: None)
        workers = dict(store_rows(spec, "select worker, count(*) from requests group by 1"))
        assert set(workers) == {a.base_url.removesuffix("/"), b.base_url.removesuffix("/")}
        assert sum(workers.values()) == 20
        # the same servers listed the other way round: the same teacher, so nothing is sent again
        spec.write_text(text.replace(f'["{a.base_url}", "{b.base_url}"]', f'["{b.base_url}", "{a.base_url}"]'))
        sent = len(a.bodies) + len(b.bodies)
        summary = run(load_spec(spec), log=lambda m: None)
        assert summary.steps[0].cached == 20 and len(a.bodies) + len(b.bodies) == sent
    reversed_spec = load_spec_text(spec.read_text(), spec).spec.teachers["t"]
    assert teacher_identity(reversed_spec, tmp_path)["base_url"] == sorted([a.base_url, b.base_url])
