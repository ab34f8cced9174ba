"""Reasoning traces without a model: the one split, the HTTP teacher's capture of both trace shapes, extra_body (sent,
keyed, never shown), the reasoning filter's reasons, verify_math on the answer alone, selection by trace length, and
the spec errors."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from curation.filters.reasoning import reasoning_filter
from curation.filters.verify_math import verify_math_filter
from curation.select.quality import length_ranks
from datagen.api import plan, run
from datagen.errors import UserError
from datagen.extra_body import keyed, masked, merge
from datagen.reasoning import Markers, split
from datagen.spec.curation_models import ReasoningFilter, VerifyMathFilter
from datagen.spec.load import load_spec
from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all
from datagen.teachers.openai_teacher import OpenAITeacher
from tests.scripted_server import ScriptedServer

# --- the one split ---------------------------------------------------------------------------------------------


def test_split_shapes():
    trace, answer = split("<think>\nadd 2 and 3\n</think>\n\nThe answer is 5.")
    assert (trace.text, trace.closed, answer) == ("add 2 and 3", True, "The answer is 5.")
    trace, answer = split("<think>still thinking about 7", Markers())
    assert (trace.text, trace.closed, answer) == ("still thinking about 7", False, "")
    # DeepSeek-R1's template opens the block in the prompt, so the reply starts inside it
    trace, answer = split("I add them.\n</think>\n#### 5")
    assert (trace.text, answer) == ("I add them.", "#### 5")
    assert split("The answer is 5.") == (None, "The answer is 5.")
    assert split("Answer first. <think>then this</think> tail") == (None, "Answer first. <think>then this</think> tail")
    trace, answer = split("[[r]]why[[/r]]42", Markers("[[r]]", "[[/r]]"))
    assert (trace.text, answer) == ("why", "42")


# --- the HTTP teacher ------------------------------------------------------------------------------------------


def _reply(body: dict) -> dict:
    q = body["messages"][-1]["content"]
    if q == "field":
        return {"text": "#### 5", "reasoning_content": "2 + 3 = 5", "reasoning_tokens": 7}
    if q == "new-field":
        return {"text": "#### 6", "reasoning": "3 + 3"}
    if q == "inline":
        return {"text": "<think>1 + 1</think>#### 2"}
    if q == "cut":
        return {"text": None, "reasoning_content": "so far 9", "finish_reason": "length"}
    # a careless server that echoes the request back in its error
    return {"status": 400, "body": {"error": f"bad request {json.dumps([body.get('api_key'), body.get('extra')])}"}}


def test_http_teacher_captures_both_trace_shapes():
    with ScriptedServer(_reply) as server:
        teacher = OpenAITeacher("t", base_url=server.base_url, model="m", api_key=None, max_attempts=1)
        reqs = [GenRequest([{"role": "user", "content": q}], ["k"]) for q in ("field", "new-field", "inline", "cut")]
        out = generate_all(teacher, reqs, GenOptions(Sampling(max_tokens=16), reasoning=Markers()))
        plain = generate_all(teacher, reqs[2:], GenOptions(Sampling(max_tokens=16)))
    (field,), (new,), (inline,), (cut,) = out
    assert (field.text, field.reasoning.text, field.reasoning.tokens) == ("#### 5", "2 + 3 = 5", 7)
    assert (new.text, new.reasoning.text, new.reasoning.tokens) == ("#### 6", "3 + 3", None)
    assert (inline.text, inline.reasoning.text) == ("#### 2", "1 + 1")
    # all trace, cut at max_tokens: a sample with an empty answer and an unclosed trace, not a failure
    assert (cut.error, cut.text, cut.reasoning.closed, cut.finish_reason) == (None, "", False, "length")
    # without `reasoning` asked for nothing changes: inline text stays whole, an all-trace reply fails as before
    assert plain[0][0].text == "<think>1 + 1</think>#### 2"
    assert plain[1][0].error.startswith("reply has no message content")


def test_extra_body_is_sent_merged_and_secrets_never_leak():
    secret = "sk-live-abcdef123456"
    teacher_body = {"chat_template_kwargs": {"enable_thinking": True, "x": 1}, "api_key": secret}
    step_body = {"chat_template_kwargs": {"x": 2}, "reasoning_effort": "low", "extra": {"token": secret}}
    with ScriptedServer(_reply) as server:
        teacher = OpenAITeacher("t", base_url=server.base_url, model="m", api_key=None, max_attempts=1,
                                extra_body=teacher_body)
        req = GenRequest([{"role": "user", "content": "echo"}], ["k"])
        ((failed,),) = generate_all(teacher, [req], GenOptions(Sampling(max_tokens=4), extra_body=step_body))
        sent = server.bodies[0]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "x": 2} and sent["reasoning_effort"] == "low"
    assert sent["api_key"] == secret  # sent as is: the server needs it
    # the server echoed the body back in its error: the stored error never holds the secret
    assert "bad request" in failed.error and secret not in failed.error and "[redacted]" in failed.error
    merged = merge(teacher_body, step_body)
    assert keyed(merged) == {"chat_template_kwargs": {"enable_thinking": True, "x": 2}, "reasoning_effort": "low",
                             "extra": {}}
    assert secret not in json.dumps(masked(merged))
    # names with a credential word inside are not credentials
    assert keyed({"thinking_token_budget": 9, "max_completion_tokens": 5}) == {"thinking_token_budget": 9,
                                                                               "max_completion_tokens": 5}


SPEC = """\
name: rk
teachers:
  t:
    backend: openai
    base_url: {url}
    model: m
{teacher_extra}
sources:
  problems:
    inline: [{{question: field}}, {{question: inline}}]
steps:
  - name: solve
    strategy: label
    teacher: t
    input: problems
    prompt: "{{{{ question }}}}"
    output: solution
{step_extra}
"""


def write(tmp_path: Path, url: str, teacher_extra: str = "", step_extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(url=url, teacher_extra=teacher_extra, step_extra=step_extra))
    return spec


def keys(spec: Path) -> set[str]:
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        return {k for (k,) in con.execute("select key from _plan").fetchall()}
    finally:
        con.close()


def test_keys_change_only_with_what_changes_the_rows(tmp_path):
    with ScriptedServer(_reply) as server:
        spec = write(tmp_path, server.base_url)
        run(load_spec(spec), log=lambda m: None)
        base = keys(spec)
        write(tmp_path, server.base_url, step_extra="    reasoning: false\n")  # said explicitly: same keys, no request
        server.reset()
        run(load_spec(spec), log=lambda m: None)
        assert keys(spec) == base and server.bodies == []
        write(tmp_path, server.base_url, step_extra="    reasoning: true\n")
        run(load_spec(spec), log=lambda m: None)
        with_trace = keys(spec)
        assert with_trace.isdisjoint(base) and len(server.bodies) == 2
        body = "    extra_body: {reasoning_effort: high, api_key: sk-aaaaaaaaaaaa}\n"
        write(tmp_path, server.base_url, step_extra="    reasoning: true\n" + body)
        run(load_spec(spec), log=lambda m: None)
        with_body = keys(spec)
        rotated = body.replace("sk-aaaaaaaaaaaa", "sk-bbbbbbbbbbbb")
        write(tmp_path, server.base_url, step_extra="    reasoning: true\n" + rotated)
        server.reset()
        run(load_spec(spec), log=lambda m: None)
        assert with_body.isdisjoint(with_trace) and keys(spec) == with_body and server.bodies == []
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        rows = con.execute("select question, solution, solution_reasoning, _reasoning_tokens, _reasoning_closed "
                           "from solve order by question").fetchall()
        runs = " ".join(r[0] for r in con.execute("select spec from _runs").fetchall())
    finally:
        con.close()
    assert rows == [("field", "#### 5", "2 + 3 = 5", 7, True), ("inline", "#### 2", "1 + 1", 2, True)]
    assert "sk-aaaa" not in runs and "sk-bbbb" not in runs and "[redacted]" in runs


# --- curation --------------------------------------------------------------------------------------------------


def test_reasoning_filter_reasons():
    rows = [
        {"solution": "#### 5", "solution_reasoning": None, "_reasoning_tokens": None, "_reasoning_closed": None},
        {"solution": "", "solution_reasoning": "so far", "_reasoning_tokens": 40, "_reasoning_closed": False,
         "_finish_reason": "length"},
        {"solution": " ", "solution_reasoning": "done thinking", "_reasoning_tokens": 30, "_reasoning_closed": True},
        {"solution": "#### 5", "solution_reasoning": "short", "_reasoning_tokens": 3, "_reasoning_closed": True},
        {"solution": "#### 5", "solution_reasoning": "long", "_reasoning_tokens": 900, "_reasoning_closed": True},
        {"solution": "#### 5", "solution_reasoning": "just right", "_reasoning_tokens": 50, "_reasoning_closed": True},
    ]
    spec = ReasoningFilter(type="reasoning", min_tokens=16, max_tokens=800)
    got = [(v.kept, v.reason, v.score) for v in reasoning_filter(spec, rows)]
    assert got == [
        (False, "no reasoning trace in solution_reasoning", None),
        (False, "unclosed trace: the reply ended inside it after 40 tokens (finish reason length); raise max_tokens "
                "or bound the trace with `thinking`", 40),
        (False, "no answer after the trace (30 tokens)", 30),
        (False, "trace of 3 tokens < min_tokens 16", 3),
        (False, "trace of 900 tokens > max_tokens 800", 900),
        (True, None, 50),
    ]
    assert reasoning_filter(ReasoningFilter(type="reasoning", require_answer=False), rows[2:3])[0].kept


def test_verify_math_ignores_numbers_in_the_trace():
    rows = [{"solution": "I cannot tell.", "solution_reasoning": "3 + 4 = 7, so 7", "answer": "#### 7"},
            {"solution": "#### 7", "solution_reasoning": "maybe 9?", "answer": "#### 7"}]
    verdicts = verify_math_filter(VerifyMathFilter(type="verify_math", column="solution", reference="answer"), rows)
    assert [(v.kept, v.reason) for v in verdicts] == [(False, "no final answer found"), (True, "answer 7 = reference")]
    # the same reply checked whole would pass on the trace's number: that is what splitting prevents
    whole = [{"solution": "<think>3 + 4 = 7, so 7</think>I cannot tell.", "answer": "#### 7"}]
    assert verify_math_filter(VerifyMathFilter(type="verify_math", column="solution", reference="answer"),
                              whole)[0].kept


def test_difficulty_ranks_a_token_count_by_value():
    rows = [{"_reasoning_tokens": 500}, {"_reasoning_tokens": 900}, {"_reasoning_tokens": 100}]
    # by characters 500 and 900 would tie (three digits each); a count ranks by its value
    assert np.allclose(length_ranks(rows, "_reasoning_tokens"), [0.5, 1.0, 0.0])


# --- spec errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("teacher_extra,step_extra,where,message", [
    ("", "    reasoning: true\n    thinking: {max_tokens: 64}\n", "steps.0.thinking",
     "runs only on in-process engines"),
    ("", "    thinking: {max_tokens: 64}\n", "steps.0.thinking", "add `reasoning: true`"),
    ("", "    extra_body: {temperature: 1}\n", "steps.0.extra_body", "set `sampling.temperature` instead"),
    ("    extra_body: {n: 2}\n", "", "teachers.t.extra_body", "set the step's `n` instead"),
    ("", "    reasoning: true\n    thinking: {max_tokens: 8, min_tokens: 9}\n", "steps.0.thinking",
     "must not exceed"),
])
def test_spec_errors(tmp_path, teacher_extra, step_extra, where, message):
    spec = write(tmp_path, "http://127.0.0.1:9/v1", teacher_extra, step_extra)
    with pytest.raises(UserError) as err:
        plan(load_spec(spec))
    assert where in str(err.value) and message in str(err.value) and "spec.yaml:" in str(err.value)
    if "in-process" in message:
        assert "extra_body" in str(err.value) and "reasoning_effort" in str(err.value)


def test_extra_body_on_an_in_process_teacher_and_filter_columns(tmp_path):
    spec = tmp_path / "local.yaml"
    spec.write_text(SPEC.format(url="http://127.0.0.1:9/v1", teacher_extra="", step_extra="")
                    .replace("backend: openai", "backend: vllm").replace("    base_url: http://127.0.0.1:9/v1\n", "")
                    .replace("    model: m", "    model: bundled:smollm2-135m-instruct")
                    + "    extra_body: {reasoning_effort: low}\n")
    with pytest.raises(UserError, match="extra_body is sent to an HTTP server"):
        plan(load_spec(spec))
    spec = write(tmp_path, "http://127.0.0.1:9/v1")
    spec.write_text(spec.read_text() + "curation:\n  input: solve\n  filters: [{type: reasoning}]\n")
    with pytest.raises(UserError, match="the reasoning filter needs `column`"):
        plan(load_spec(spec))
