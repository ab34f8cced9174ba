"""The hard budget and the estimate, against the scripted teacher on 127.0.0.1: a cap stops a run partway (exit 1)
without ever spending past it, a re-run with a higher cap finishes without sending anything twice, and the plan's
worst case is never below what a run spends."""

from __future__ import annotations

import subprocess
import sys

import pytest

from datagen import api
from datagen.pipeline.estimate import estimate
from datagen.spec.load import load_spec
from tests.batch_server import BatchServer
from tests.scripted_server import ScriptedServer
from tests.test_run_scripted import make_spec, quiet_run, store_rows

PRICE = "    price: {input: 1000, output: 1000}\n"  # $0.001 a token: a handful of requests make a dollar
REVIEW = """\
  - name: review
    strategy: label
    teacher: t
    input: solve
    prompt: "Review: {{ solution }}"
    output: verdict
"""


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True, timeout=120)


def spent(spec) -> float:
    return store_rows(spec, "select coalesce(sum(cost_usd), 0) from requests")[0][0]


def test_cap_stops_the_run_partway_and_a_higher_cap_finishes_it(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url, teacher_opts=PRICE)
        out = cli("run", "-q", str(spec), "--max-usd", "0.7")
        assert out.returncode == 1, out.stderr
        assert "budget: $" in out.stderr and "spent of the $0.7 cap" in out.stderr
        assert "requests left undone" in out.stderr and "--max-usd" in out.stderr and "Traceback" not in out.stderr
        done = store_rows(spec, "select count(*) from requests where status = 'done'")[0][0]
        assert 0 < done < 12 and len(server.bodies) == done
        assert 0 < spent(spec) <= 0.7
        assert store_rows(spec, "select status from _runs") == [("failed",)]
        # the same cap again sends nothing: the store's spend counts
        again = cli("run", "-q", str(spec), "--max-usd", "0.7")
        assert again.returncode == 1 and len(server.bodies) == done
        ok = cli("run", "-q", str(spec), "--max-usd", "100")
        assert ok.returncode == 0, ok.stderr
        assert len(server.bodies) == 12 and set(server.counts.values()) == {1}  # nothing sent twice
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12


def test_budget_in_the_spec_and_the_estimate_bounds_the_spend(tmp_path):
    with ScriptedServer() as server:
        spec = make_spec(tmp_path, server.base_url, teacher_opts=PRICE, extra_step=REVIEW)
        spec.write_text(spec.read_text().replace("seed: 11", "seed: 11\nbudget: {max_usd: 100}"))
        est = estimate(api.plan(load_spec(spec)))
        summary = quiet_run(spec)
    assert [(x.step, x.requests) for x in est.lines] == [("solve", 12), ("review", 12)]
    assert [x.prompt_basis for x in est.lines] == ["estimated", "from earlier steps"]
    total = spent(spec)
    assert total > 0 and sum(s.cost_usd for s in summary.steps) == pytest.approx(total)
    for x in est.lines:  # per step, not only in all
        actual = store_rows(spec, f"select sum(cost_usd) from requests where step = '{x.step}'")[0][0]
        assert x.worst_usd >= actual
        assert x.max_output_tokens == 12 * 40
    assert est.total("worst_usd") >= total >= 0
    text = api.describe(api.plan(load_spec(spec)), 100)
    assert "already spent (in the store): $" in text and "budget: $100 in all" in text


def test_a_batch_is_reserved_at_its_worst_case_too(tmp_path):
    with BatchServer() as server:
        spec = make_spec(tmp_path, server.base_url,
                         teacher_opts=PRICE + "    batch: {enabled: true, poll_seconds: 0.05}\n")
        # a group of 2 samples is $0.27 at worst at the batch price, and spends about $0.03
        out = cli("run", "-q", str(spec), "--max-usd", "0.35")
        assert out.returncode == 1 and "budget: $" in out.stderr
        sent = sum(len(b["lines"]) for b in server.batches.values())
        assert 0 < sent < 12 and spent(spec) <= 0.35
        assert "open batch" not in cli("status", str(spec)).stdout
        assert cli("run", "-q", str(spec), "--max-usd", "50").returncode == 0
        assert len(server.ran) == 12 and set(server.ran.values()) == {1}
    assert store_rows(spec, "select count(*) from solve")[0][0] == 12


def test_validate_says_what_a_budget_does_not_limit_and_refuses_bad_values(tmp_path):
    spec = make_spec(tmp_path, "http://127.0.0.1:9/v1")
    spec.write_text(spec.read_text().replace("seed: 11", "seed: 11\nbudget: {max_usd: 5}"))
    out = cli("validate", str(spec))
    assert out.returncode == 0, out.stderr
    assert "no price, cost unknown and not limited by a budget: solve (t)" in out.stdout
    assert "budget: $5 in all" in out.stdout
    bad = cli("run", str(spec), "--max-usd", "0")
    assert bad.returncode == 2 and "--max-usd must be more than 0" in bad.stderr
    spec.write_text(spec.read_text().replace("    max_attempts: 2", "    max_attempts: 2\n    price: {input: -1, "
                                                                      "output: 2}"))
    out = cli("validate", str(spec))
    line = 1 + spec.read_text().splitlines().index("    price: {input: -1, output: 2}")
    assert out.returncode == 2 and "teachers.t.price.input" in out.stderr and f"spec.yaml:{line}:" in out.stderr
    spec.write_text(spec.read_text().replace("price: {input: -1, output: 2}", "price: {input: 1, output: 2}")
                    .replace("budget: {max_usd: 5}", "budget: {max_usd: 0}"))
    out = cli("validate", str(spec))
    assert out.returncode == 2 and "budget.max_usd" in out.stderr and "spec.yaml:3" in out.stderr
