"""Feedback: the teacher judges rows of an earlier step, (x, y ~ pS, feedback of T).

Three modes, one request per judged row (or ordered pair) and sample:
- score (default): the teacher scores the row against the `rubric`; `<output>` is the parsed number and
  `<output>_reason` the rest of the reply. No number, or one outside `scale`, is a failed request with that reason.
- `pairwise: true`: the teacher sees two answers to the same input, as A and B, and names the better one. Every pair
  is asked in both orders (two requests), so a judge that just prefers a position is caught: pairs.py records a
  disagreement between the orders as a tie.
- `revise: true`: the teacher minimally corrects the answer; `<output>` is the revision, which pairs.py pairs with
  the original (revision chosen, original rejected).

What the judge sees is the judged row's own request (its last user turn: `task`) and its output (`response`), so a
default prompt needs no template; a custom `prompt` may use those, `rubric`, `low`, `high` (`response_a` and
`response_b` when pairwise) and the judged rows' columns. The rubric is itself a template over the judged row's
columns (pairwise: the row shown as A), so it can carry a reference answer.
"""

from __future__ import annotations

import json
import re
from itertools import combinations
from typing import Any

from datagen import templates
from datagen.keys import logprobs_key, request_key
from datagen.spec.models import JudgeStep
from datagen.spec.plan import PlannedStep, check_clash, check_template, columns_of, step_teachers, step_view
from datagen.store import reads
from datagen.store.decisions import derived_counts
from datagen.strategies import pairs
from datagen.strategies.base import Job, PlannedRequest, Round, StepEstimate, Volume
from datagen.strategies.label import public

STEP = JudgeStep


def reads_from(step: JudgeStep) -> list[tuple[str, tuple]]:
    return [(step.input, ("input",))]


def volume(step: JudgeStep, teachers: int, volume_of) -> Volume | None:
    """`n` verdicts per judged row; pairwise, per ordered pair of rows of one input (both orders)."""
    up = volume_of(step.input)
    if up is None:
        return None
    per_input = up.per_input * (up.per_input - 1) if step.pairwise else up.per_input
    return Volume(up.inputs, per_input * step.n)


def template_texts(step: JudgeStep) -> list[str]:
    return [t for t in (step.system, step.prompt, step.rubric) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step) -> None:
    return None  # it shows other steps' answers, not an input row alone

JUDGE_VARIABLES = {"rubric", "task", "response", "low", "high"}
PAIRWISE_VARIABLES = {"rubric", "task", "response_a", "response_b"}


def plan(loaded, plan, shape, i: int, step: JudgeStep) -> PlannedStep:
    """A judge reads an earlier generation step's rows: the prompt each row answered (its stored request) and its
    output are what it sees, and they become a preference pair's prompt and sides."""
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    judged = {s.name: s for s in plan.steps}.get(step.input)
    if judged is None:
        raise loaded.error(loc + ("input",), f"a judge reads an earlier generation step's rows (their prompt and "
                                             f"output are what it judges); `{step.input}` is a source: label it in a "
                                             "step first and judge that step")
    if not judged.output_is_text:
        raise loaded.error(loc + ("input",), f"`{step.input}` is itself a judge of scores or verdicts; judge the "
                                             "step that wrote the answers")
    constrains = loaded.spec.teachers[step.teacher].backend not in ("transformers", "anthropic")
    if step.verdict_format is None:
        # a small judge asked for "Score: N" in free text misses the format most of the time (measured: 11 of 12
        # verdicts of the bundled model); a verdict constrained to JSON always parses
        step.verdict_format = "json" if constrains and not step.revise else "text"
    if step.verdict_format == "json" and not constrains:
        raise loaded.error(loc + ("verdict_format",), "a JSON verdict needs structured output: a `vllm` or `openai` "
                                                      "teacher; use `verdict_format: text` with transformers")
    input_cols = columns_of(shape, step.input)
    produced = produced_columns(step)
    check_clash(loaded, loc, produced, input_cols, step.input)
    context = set(input_cols) | (PAIRWISE_VARIABLES if step.pairwise else JUDGE_VARIABLES)
    check_template(loaded, loc + ("rubric",), step.rubric, set(input_cols), step.input)
    if step.prompt:
        check_template(loaded, loc + ("prompt",), step.prompt, context, step.input)
    if step.system:
        check_template(loaded, loc + ("system",), step.system, context, step.input)
    view = step_view(step, step.input, input_cols, produced, output_is_text=step.revise)
    planned = PlannedStep(step, i, step.input, input_cols, produced, names, view, output_is_text=step.revise,
                          makes_pairs=step.pairs is not None or step.revise)
    if not step.pairwise and not step.revise:
        planned.score_scale = tuple(step.scale)
    return planned


def produced_columns(step: JudgeStep) -> dict[str, str]:
    """score: `<output>` (a number) and `<output>_reason`; pairwise: a verdict per ordered pair (`<output>` is A, B
    or tie, `<output>_reason`, `<output>_other`: the `_id` of the row shown as B); revise: the corrected answer."""
    out = step.output
    if step.revise:
        return {out: "VARCHAR"}
    if step.pairwise:
        return {out: "VARCHAR", f"{out}_reason": "VARCHAR", f"{out}_other": "VARCHAR"}
    return {out: "DOUBLE", f"{out}_reason": "VARCHAR"}


def plan_line(st: PlannedStep) -> str:
    return st.input


def rounds(job: Job):
    rows = reads.rows(job.con, job.st.input)
    out: list[PlannedRequest] = []
    for t in job.teachers:
        out += build_requests(job.con, job.plan, job.st, rows, t.name, t.identity, t.sampling)
    yield Round(out)


def estimate(job: Job, volume_of) -> StepEstimate:
    """A judge reads an earlier step, so its prompts are known only once that step has run; pairwise, every two
    rows of one input in both orders."""
    return StepEstimate(volume(job.step, len(job.teachers), volume_of).rows, [])


def finish(job: Job) -> None:
    if job.st.makes_pairs:
        made, dropped = pairs.build_and_store(job.con, job.st)
        job.log(f"step {job.st.name}: {made} preference pairs ({dropped} candidates without a pair, see decisions)")


def status_lines(con, st: PlannedStep) -> list[str]:
    return [f"    {stage}: {kept} pairs built, {dropped} dropped (reasons in `decisions`)"
            for stage, kept, dropped in derived_counts(con, st.name)]


def card_notes(step: JudgeStep) -> list[str]:
    mode = "revision" if step.revise else "pairwise, both orders" if step.pairwise else \
        f"score {step.scale[0]:g}-{step.scale[1]:g}"
    out = [f"judge ({mode}): {step.rubric[:80]}"]
    if step.pairs is not None:
        out.append(f"pairs by {step.pairs.by}" + (f", min margin {step.pairs.min_margin:g}"
                                                  if step.pairs.by == "score" else ""))
    return out

SCORE_PROMPT = """\
You are a strict grader. Grade the response to the task below.

Criteria: {{ rubric }}

Task:
{{ task }}

Response:
{{ response }}

"""

PAIRWISE_PROMPT = """\
You are a strict grader. Compare two responses to the task below.

Criteria: {{ rubric }}

Task:
{{ task }}

Response A:
{{ response_a }}

Response B:
{{ response_b }}

"""

REVISE_PROMPT = """\
Here is a task and a response to it.

Criteria: {{ rubric }}

Task:
{{ task }}

Response:
{{ response }}

Correct the response minimally so that it meets the criteria: change only what is wrong and keep everything else \
word for word. Reply with the corrected response only."""

# how the default prompts ask for the verdict, by (pairwise, verdict_format)
ASK = {
    (False, "text"): 'Write one or two sentences of reasoning, then end with a last line of the form "Score: N", '
                     "where N is a number from {{ low }} to {{ high }}.",
    (False, "json"): 'Reply with a JSON object: {"reason": "<one or two sentences>", "score": <a number from '
                     "{{ low }} to {{ high }}>}.",
    (True, "text"): 'Write one or two sentences of reasoning, then end with a last line of the form "Winner: A", '
                    '"Winner: B" or "Winner: tie".',
    (True, "json"): 'Reply with a JSON object: {"reason": "<one or two sentences>", "winner": "A", "B" or "tie"}.',
}


def default_prompt(step: JudgeStep) -> str:
    if step.revise:
        return REVISE_PROMPT
    return (PAIRWISE_PROMPT if step.pairwise else SCORE_PROMPT) + ASK[(step.pairwise, step.verdict_format)]


REASON_MAX_CHARS = 300  # a JSON verdict's `reason`: "one or two sentences"


def json_schema(step: JudgeStep) -> dict | None:
    """With `verdict_format: json`, the schema the backend constrains the verdict to (reason first, then verdict)."""
    if step.verdict_format != "json":
        return None
    if step.pairwise:
        verdict = {"winner": {"type": "string", "enum": ["A", "B", "tie"]}}
    else:
        low, high = step.scale
        if float(low).is_integer() and float(high).is_integer() and high - low <= 100:
            verdict = {"score": {"type": "integer", "enum": list(range(int(low), int(high) + 1))}}
        else:
            verdict = {"score": {"type": "number", "minimum": low, "maximum": high}}
    # the cap closes a rambling reason in time for the verdict to fit in `max_tokens`
    return {"type": "object", "properties": {"reason": {"type": "string", "maxLength": REASON_MAX_CHARS}, **verdict},
            "required": ["reason", *verdict]}


_NUM = r"(-?\d+(?:\.\d+)?)"
SCORE_RE = re.compile(r"(?i)\bscore\b[\s:=*]*" + _NUM)
VERDICT_RE = re.compile(r"(?i)\b(?:winner|verdict|better)\b[\s:=*]*(A|B|tie)\b")


def task_of(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def build_requests(con, plan, st, rows: list[dict], teacher_name: str, identity: dict,
                   sampling: dict) -> list[PlannedRequest]:
    step: JudgeStep = st.spec
    judged_output = plan.step(st.input).spec.output
    tasks = {rid: a["messages"] for rid, a in reads.answered(con, st.input).items()}
    base = {"low": _num(step.scale[0]), "high": _num(step.scale[1])}
    out: list[PlannedRequest] = []
    if step.pairwise:
        for first, second in ordered_pairs(rows):
            context = {**public(first), **base, "rubric": templates.render(step.rubric, public(first)),
                       "task": task_of(tasks.get(first["_id"], [])),
                       "response_a": _text(first[judged_output]), "response_b": _text(second[judged_output])}
            out += _requests(step, first["_id"], context, teacher_name, identity, sampling,
                             [(second["_id"], "compared")])
        return out
    for row in rows:
        context = {**public(row), **base, "rubric": templates.render(step.rubric, public(row)),
                   "task": task_of(tasks.get(row["_id"], [])),
                   "response": _text(row[judged_output])}
        out += _requests(step, row["_id"], context, teacher_name, identity, sampling, [])
    return out


def ordered_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """Every two rows that answer the same input, in both orders (A/B then B/A)."""
    by_input: dict[Any, list[dict]] = {}
    for row in rows:
        by_input.setdefault(row["_parent_id"], []).append(row)
    out = []
    for group in by_input.values():
        group.sort(key=lambda r: (r["_sample_index"], r["_id"]))
        for a, b in combinations(group, 2):
            out += [(a, b), (b, a)]
    return out


def _requests(step: JudgeStep, parent_id: str, context: dict, teacher_name: str, identity: dict, sampling: dict,
              lineage: list[tuple[str, str]]) -> list[PlannedRequest]:
    messages = []
    if step.system:
        messages.append({"role": "system", "content": templates.render(step.system, context)})
    messages.append({"role": "user", "content": templates.render(step.prompt or default_prompt(step), context)})
    out = []
    for index in range(step.n):
        key = request_key(step=step.name, parent_id=parent_id, messages=messages, teacher=identity,
                          sampling=sampling, json_schema=json_schema(step), logprobs=logprobs_key(step),
                          sample_index=index)
        out.append(PlannedRequest(key, step.name, parent_id, index, messages, teacher_name, list(lineage)))
    return out


def parse(step: JudgeStep, text: str, req: PlannedRequest, sample=None) -> tuple[dict | None, str | None]:
    """The produced fields of one verdict, or the reason it is unusable (then the request is failed)."""
    text = (text or "").strip()
    if step.revise:
        return ({}, None) if text else (None, "the revision is empty")
    if step.pairwise:
        verdict, reason = parse_verdict(text)
        if verdict is None:
            return None, reason
        other = next(p for p, role in req.lineage if role == "compared")
        return {step.output: verdict, f"{step.output}_reason": reason, f"{step.output}_other": other}, None
    score, reason = parse_score(text)
    if score is None:
        return None, reason
    low, high = step.scale
    if not (low <= score <= high):
        return None, f"score {_num(score)} is outside the scale {_num(low)} to {_num(high)}: {_clip(text)}"
    return {step.output: score, f"{step.output}_reason": reason}, None


def parse_score(text: str) -> tuple[float | None, str]:
    """(score, reason) from a reply ending in `Score: N` (or a JSON object with `score` and `reason`)."""
    as_json = _json_object(text)
    if as_json is not None and isinstance(as_json.get("score"), (int, float)) and not isinstance(as_json["score"], bool):
        return float(as_json["score"]), str(as_json.get("reason") or "")
    matches = list(SCORE_RE.finditer(text))
    if not matches:
        expected = "a JSON object with `score`" if text.lstrip().startswith("{") else "a last line `Score: N`"
        return None, f"no score in the verdict (expected {expected}; a cut-off reply needs a larger " \
                     f"`max_tokens`): {_clip(text)}"
    last = matches[-1]
    return float(last.group(1)), _reason(text, last.start())


def parse_verdict(text: str) -> tuple[str | None, str]:
    """('A' | 'B' | 'tie', reason) from a reply ending in `Winner: A` (or JSON with `winner`)."""
    as_json = _json_object(text)
    if as_json is not None and str(as_json.get("winner", "")).strip().lower() in ("a", "b", "tie"):
        return _norm_verdict(str(as_json["winner"])), str(as_json.get("reason") or "")
    matches = list(VERDICT_RE.finditer(text))
    if not matches:
        expected = "a JSON object with `winner`" if text.lstrip().startswith("{") else \
            "a last line `Winner: A`, `Winner: B` or `Winner: tie`"
        return None, f"no verdict in the reply (expected {expected}; a cut-off reply needs a larger `max_tokens`): " \
                     f"{_clip(text)}"
    last = matches[-1]
    return _norm_verdict(last.group(1)), _reason(text, last.start())


def _norm_verdict(v: str) -> str:
    v = v.strip()
    return "tie" if v.lower() == "tie" else v.upper()


def _reason(text: str, end: int) -> str:
    """What the judge wrote before its verdict line, without a leading `Reason:`."""
    head = text[:end].strip().rstrip("*-#").strip()
    return re.sub(r"(?i)^\W*reason(ing)?\W*:\W*", "", head).strip()


def _json_object(text: str) -> dict | None:
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _num(x: float) -> str:
    return f"{x:g}"


def _clip(text: str) -> str:
    return repr(text[:120])
