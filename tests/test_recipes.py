"""CONTRIBUTING.md's recipes, held true: a toy strategy (tests/toy_strategy.py) and a toy filter (below) are added
the way the guide says, touching nothing else, and run end to end against the scripted teacher on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Literal

import duckdb
import pytest

import datagen
from datagen.errors import UserError
from datagen.spec.curation_models import FILTER_MODELS, FilterBase
from datagen.spec.models import STEP_MODELS
from datagen.verdict import Verdict
from tests.scripted_server import ScriptedServer


class MinWordsFilter(FilterBase):
    """The toy filter's model: keep rows whose `column` has at least `min` words."""

    type: Literal["min_words"]
    column: str
    min: int = 2


def min_words(spec: MinWordsFilter, rows: list[dict], spec_dir) -> list[Verdict]:
    out = []
    for row in rows:
        words = len(str(row.get(spec.column) or "").split())
        out.append(Verdict(True, None, words) if words >= spec.min else
                   Verdict(False, f"{words} words, under min {spec.min}", words))
    return out


@pytest.fixture
def registered():
    """The guide's one registry line for each (`add(rewrite)`, `add(MinWordsFilter, min_words)`), undone after."""
    import curation.filters
    from curation.filters import _FILTERS
    from datagen import strategies
    from tests import toy_strategy

    strategies.add(toy_strategy)
    curation.filters.add(MinWordsFilter, min_words)
    yield
    strategies.STRATEGIES.pop("rewrite")
    STEP_MODELS.pop("rewrite")
    FILTER_MODELS.pop("min_words")
    _FILTERS.pop("min_words")


SPEC = """\
name: recipes
teachers:
  t: {{backend: openai, base_url: "{base}", model: scripted, max_attempts: 1}}
sources:
  facts: {{path: facts.jsonl}}
steps:
  - {{name: restated, strategy: rewrite, teacher: t, input: facts, column: fact, n: 2, output: restatement,
     max_failure_rate: 1}}
curation:
  input: restated
  filters:
    - {{type: min_words, column: restatement, min: 5}}
"""

FACTS = ["Water boils at 100 degrees", "Cats purr", "The moon orbits the earth", "Ice floats on water"]


def script(body: dict) -> str:
    """A restatement as long as the fact it restates (so the filter's verdicts are known), or empty for cats."""
    content = body["messages"][-1]["content"]
    fact = content.removeprefix("Say this in other words: ")
    return "" if fact == "Cats purr" else f"In other words: {fact.lower()}"


def test_a_strategy_and_a_filter_added_by_the_recipe_run_end_to_end(tmp_path, registered):
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps({"fact": f}) + "\n" for f in FACTS))
    spec = tmp_path / "spec.yaml"
    with ScriptedServer(script) as server:
        spec.write_text(SPEC.format(base=server.base_url))
        plan = datagen.validate(spec)
        assert "step 1 restated: rewrite fact of facts with t, n=2 -> restatement" in datagen.api.describe(plan)
        assert plan.step("restated").max_rows == 8  # the strategy's volume: 4 facts x n=2
        summary = datagen.run(spec)
        assert (summary.steps[0].generated, summary.steps[0].failed) == (6, 2)  # the empty rewrites fail
        assert len(server.bodies) == 8
        datagen.run(spec)  # the empty rewrites are the replies' own fault: a re-run leaves them failed ...
        assert len(server.bodies) == 8
        # ... and with retry_failed sends only them again: the keys are the strategy's own
        datagen.run(spec, retry_failed=True)
        assert len(server.bodies) == 10 and {b["messages"][-1]["content"] for b in server.bodies[8:]} == \
            {"Say this in other words: Cats purr"}

    con = duckdb.connect(str(plan.loaded.store_path), read_only=True)
    try:
        rows = con.execute("SELECT fact, restatement FROM restated ORDER BY fact").fetchall()
        errors = con.execute("SELECT error FROM requests WHERE status = 'failed'").fetchall()
        kept = con.execute("SELECT count(*) FROM curated").fetchone()[0]
        reasons = con.execute("SELECT reason FROM decisions WHERE stage = 'filter:min_words' AND NOT kept "
                              "ORDER BY reason").fetchall()
    finally:
        con.close()
    assert rows[0] == ("Ice floats on water", "In other words: ice floats on water")
    assert len(rows) == 6 and all(r[1] == f"In other words: {r[0].lower()}" for r in rows)
    assert errors == [("the rewrite is empty",)] * 2
    # "In other words: ice floats on water" has 7 words, every restatement at least 6: min 5 keeps them all
    assert kept == 6 and reasons == []
    card = (datagen.export(spec).path / "README.md").read_text()
    assert "`fact` of `facts` rewritten" in card


def test_a_recipes_spec_errors_name_the_new_strategy_and_filter(tmp_path, registered):
    (tmp_path / "facts.jsonl").write_text(json.dumps({"fact": "x y"}) + "\n")
    good = SPEC.format(base="http://127.0.0.1:9/v1")
    for text, message in [
        (good.replace("strategy: rewrite", "strategy: rewrit"), "is not one of label, expand, meta, judge, self, conversation, agent, score, rewrite"),
        (good.replace("column: fact,", "column: nope,"), "steps.0.column: `nope` is not a column of `facts`"),
        (good.replace("min: 5", "mni: 5"), "unknown key `mni`; did you mean `min`?"),
        (good.replace("type: min_words", "type: min_word"), "min_words"),
    ]:
        spec = tmp_path / "spec.yaml"
        spec.write_text(text)
        with pytest.raises(UserError) as err:
            datagen.validate(spec)
        assert message in str(err.value), str(err.value)
