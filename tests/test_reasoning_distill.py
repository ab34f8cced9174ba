"""specs/reasoning_distill.yaml end to end against a scripted reasoning teacher on loopback
(tests/reasoning_fixtures.py: traces in `reasoning_content`, in `reasoning` and inline, right and wrong answers, an
unclosed trace): the stored columns, every curation decision, the three export forms loaded with `datasets`, the
chat-template check, and one SFTTrainer step on the inline form through `datagen train`."""

from __future__ import annotations

import pytest
import yaml

from datagen.api import plan as build_plan, run
from datagen.errors import UserError
from datagen.spec.load import load_spec
from tests.test_examples_e2e import query_json as query
from tests.reasoning_fixtures import LIMIT, SHAPES, example_on, problems, reference, script
from tests.scripted_server import ScriptedServer


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reasoning")
    with ScriptedServer(script) as server:
        spec = example_on(server.base_url, folder)
        run(load_spec(spec), log=lambda m: None)
        bodies = list(server.bodies)
    return spec, bodies


def by_shape(spec) -> dict[str, list[dict]]:
    rows = {r["question"]: r for r in query(spec, "select * from solve")}
    out: dict[str, list[dict]] = {}
    for k, p in enumerate(problems()):
        out.setdefault(SHAPES[k % len(SHAPES)], []).append({**rows[p["question"]], "right": reference(p["answer"])})
    return out


def test_both_trace_shapes_and_an_unclosed_trace_are_stored(example):
    spec, bodies = example
    assert len(bodies) == LIMIT and all(b["chat_template_kwargs"] == {"enable_thinking": True} for b in bodies)
    rows = by_shape(spec)
    for r in rows["field_right"]:  # reasoning_content; the server counted the trace
        assert r["solution"] == f"The total is {r['right']}.\n#### {r['right']}"
        assert r["solution_reasoning"].endswith(str(r["right"] + 7)) and r["_reasoning_tokens"] == 61
    for r in rows["inline_right"]:  # split off the content; counted by estimate (characters / 4)
        assert r["solution"].startswith("So it is") and "<think>" not in r["solution"]
        assert r["solution_reasoning"].startswith("Let me") and "</think>" not in r["solution_reasoning"]
        assert r["_reasoning_tokens"] == -(-len(r["solution_reasoning"]) // 4) and r["_reasoning_closed"]
    for r in rows["field_wrong"]:  # vLLM's newer `reasoning` field
        assert r["solution"] == f"#### {r['right'] + 1}" and r["solution_reasoning"].endswith(str(r["right"]))
    for r in rows["unclosed"]:
        assert (r["solution"], r["_reasoning_closed"], r["_finish_reason"]) == ("", False, "length")
        assert r["solution_reasoning"].endswith("and then")
    for r in rows["no_trace"]:
        assert r["solution_reasoning"] is None and r["_reasoning_tokens"] is None


def test_curation_keeps_verified_closed_traces_longest_first(example):
    spec, _ = example
    rows = by_shape(spec)
    ids = {shape: {r["_id"] for r in rs} for shape, rs in rows.items()}
    decisions = query(spec, "select stage, row_id, kept, reason from decisions")
    dropped = {(d["stage"], d["row_id"]): d["reason"] for d in decisions if not d["kept"]}
    for rid in ids["unclosed"]:
        assert dropped[("filter:truncated", rid)].startswith("truncated")
    for rid in ids["short_trace"]:
        assert dropped[("filter:reasoning", rid)] == "trace of 4 tokens < min_tokens 16"
    for rid in ids["no_trace"]:
        assert dropped[("filter:reasoning", rid)] == "no reasoning trace in solution_reasoning"
    for r in rows["field_wrong"]:
        assert dropped[("filter:verify_math", r["_id"])] == f"answer {r['right'] + 1} != reference {r['right']}"
    for rid in ids["inline_no_number"]:  # the right number is in the trace only: it does not count
        assert dropped[("filter:verify_math", rid)] == "no final answer found"
    curated = query(spec, "select _id, _reasoning_tokens from curated")
    assert {c["_id"] for c in curated} == ids["field_right"] | ids["inline_right"]
    tokens = [c["_reasoning_tokens"] for c in curated]
    assert tokens == sorted(tokens, reverse=True) and tokens[0] > 61  # the longer inline traces first


def set_form(spec, form: str) -> None:
    doc = yaml.safe_load(spec.read_text())
    doc["export"]["reasoning"] = form
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_three_export_forms_load_with_datasets(example, tmp_path):
    from datasets import load_dataset

    from datagen.publish.export import export

    spec, _ = example
    traces = {r["solution"]: r["solution_reasoning"] for r in query(spec, "select * from curated")}
    for form in ("inline", "field", "drop"):
        set_form(spec, form)
        result = export(load_spec(spec), out=tmp_path / form)
        turns = [m[-1] for m in load_dataset(str(result.path))["train"]["messages"]]
        assert len(turns) == 4 and all(t["role"] == "assistant" for t in turns)
        card = (result.path / "README.md").read_text()
        assert f"`export.reasoning: {form}`" in card
        for t in turns:
            if form == "inline":
                answer = t["content"].split("</think>\n\n")[1]
                assert t["content"] == f"<think>\n{traces[answer]}\n</think>\n\n{answer}"
            elif form == "field":
                assert t["reasoning_content"] == traces[t["content"]]
            else:
                assert t["content"] in traces and "<think>" not in t["content"] and "reasoning_content" not in t
    set_form(spec, "inline")


STRIPPING = ("{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and '</think>' in c %}"
             "{% set c = c.split('</think>')[-1].lstrip() %}{% endif %}<|im_start|>{{ m['role'] }}\n{{ c }}<|im_end|>\n"
             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_check(example, bundled_model_path):
    from transformers import AutoTokenizer

    from sft.reasoning_check import check_trace_reaches, trained_text
    from sft.rows import load_rows

    spec, _ = example
    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    bundled = tok.chat_template
    for form, template, refused in [("inline", None, False), ("field", None, True), ("drop", None, False),
                                    ("inline", STRIPPING, True)]:
        set_form(spec, form)
        loaded = load_spec(spec)
        rows = load_rows(loaded, build_plan(loaded), None, None)
        tok.chat_template = template or bundled
        if not refused:
            check_trace_reaches(tok, rows, 384)
            continue
        with pytest.raises(UserError) as err:
            check_trace_reaches(tok, rows, 384)
        fix = "export.reasoning: inline" if form == "field" else "train.chat_template"
        assert "leaves the reasoning trace out" in str(err.value) and fix in str(err.value)
    # what the check measured: the bundled template keeps an inline trace in the trained tokens
    set_form(spec, "inline")
    loaded = load_spec(spec)
    first = load_rows(loaded, build_plan(loaded), None, None).train[0]
    tok.chat_template = bundled
    assert trained_text(tok, first["prompt"], first["completion"], 384).startswith("<think>\n")


def test_train_refuses_a_stripping_template_then_trains_one_step_inline(example, tmp_path):
    from sft.train import train

    spec, _ = example
    (spec.parent / "strip.jinja").write_text(STRIPPING)
    doc = yaml.safe_load(spec.read_text())
    doc["train"]["chat_template"] = "strip.jinja"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(UserError, match="strips the trace"):
        train(load_spec(spec), out=tmp_path / "refused", log=lambda m: None)
    assert not (tmp_path / "refused").exists()
    del doc["train"]["chat_template"]
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    logged: list[str] = []
    result = train(load_spec(spec), out=tmp_path / "student", max_steps=1, log=logged.append)
    assert result.steps == 1 and result.train_rows == 4 and (tmp_path / "student" / "config.json").exists()
    assert any("reasoning traces inline" in line for line in logged)
