"""Budget forcing while generating, on the bundled model: the example's `budgeted` step through `datagen run` on the
in-process vLLM engine (one engine for both steps), and the transformers teacher's forcing. The bundled model is no
reasoning model and never writes `</think>`, so only the budget ends its traces; with `.` as the end marker it ends
them early, and the minimum must make it go on."""

from __future__ import annotations

import copy

import duckdb
import yaml
from transformers import AutoTokenizer

from datagen.api import run
from datagen.spec.load import load_spec
from tests.reasoning_fixtures import SPECS


def test_budget_forcing_while_generating(tmp_path, bundled_model_path):
    doc = yaml.safe_load((SPECS / "reasoning_distill.yaml").read_text())
    doc["sources"]["problems"]["path"] = str(SPECS / "data" / "gsm8k_train_501_548.jsonl")
    doc["teachers"]["small"]["sampling"] = {"temperature": 0.0, "max_tokens": 16}
    budgeted = next(s for s in doc["steps"] if s["name"] == "budgeted")
    budgeted.update(reasoning={"start": "<think>", "end": "."}, thinking={"max_tokens": 40, "min_tokens": 30,
                                                                          "wait": "Wait"})
    capped = copy.deepcopy(budgeted)
    capped.update(name="capped", reasoning=True, thinking={"max_tokens": 8})
    doc["steps"] = [budgeted, capped]
    for key in ("curation", "export", "train"):
        doc.pop(key)
    spec = tmp_path / "budget.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    summary = run(load_spec(spec), log=lambda m: None)
    assert [(s.generated, s.failed) for s in summary.steps] == [(4, 0), (4, 0)]

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        budget = con.execute("select solution_reasoning, _reasoning_tokens, _reasoning_closed from budgeted").fetchall()
        cap = con.execute("select solution_reasoning, solution, _reasoning_tokens from capped").fetchall()
    finally:
        con.close()
    for trace, tokens, closed in budget:
        assert closed and tokens == len(tok.encode(trace, add_special_tokens=False)) and 30 <= tokens <= 40
    assert any("Wait" in trace for trace, _, _ in budget)  # an early end below min_tokens became "Wait"
    for trace, _answer, tokens in cap:  # cut at the maximum, then the answer generated after the end marker
        assert tokens == 8 == len(tok.encode(trace, add_special_tokens=False)) and "Wait" not in trace


def test_transformers_teacher_forces_the_budget(bundled_model_path):
    from datagen.reasoning import Markers
    from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all
    from datagen.teachers.thinking import ThinkingBudget
    from datagen.teachers.transformers_teacher import TransformersTeacher

    teacher = TransformersTeacher("t", bundled_model_path)
    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    long = [{"role": "user", "content": "Explain in detail why the sky is blue."}]
    chat = [{"role": "user", "content": "What is 2 plus 2? Reply in one short sentence."}]
    try:
        capped = GenOptions(Sampling(temperature=0.0, max_tokens=6), reasoning=Markers(),
                            thinking=ThinkingBudget(max_thinking_tokens=8, max_tokens=6))
        ((a,),) = generate_all(teacher, [GenRequest(long, ["k0"])], capped)
        waited = GenOptions(Sampling(temperature=0.0, max_tokens=6), reasoning=Markers(end="."),
                            thinking=ThinkingBudget(max_thinking_tokens=24, min_thinking_tokens=12, end=".", max_tokens=4))
        ((c,),) = generate_all(teacher, [GenRequest(chat, ["k2"])], waited)
    finally:
        teacher.close()
    assert a.error is None and a.reasoning.tokens == 8 == len(tok.encode(a.reasoning.text, add_special_tokens=False))
    assert a.reasoning.phases == 2  # one thinking phase cut at 8, then the answer
    assert c.error is None and c.reasoning.waits >= 1 and "Wait" in c.reasoning.text
    assert 12 <= c.reasoning.tokens <= 24
