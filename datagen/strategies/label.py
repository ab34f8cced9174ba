"""Labeling: the teacher writes the output for inputs you already have (y ~ pT(y | I + demos + x)).

Functions from rows to rows: `rounds` turns the input rows into chat requests (one per wanted sample, per teacher),
and `parse` turns a teacher reply into the produced columns or a reason it failed. With several teachers or samples
per input, `agreement` and `vote` (agreement.py) compare their answers once the step's rows are in. With
`reasoning: true` the teacher splits the trace off (datagen/reasoning.py): the output column holds the answer alone,
and the trace and its length are produced columns beside it.
"""

from __future__ import annotations

import json
import random
from typing import Any
from collections.abc import Iterator

from datagen import reasoning, templates
from datagen.keys import logprobs_key, request_key
from datagen.spec.models import DemosSpec, LabelStep
from datagen.spec.plan import (PlannedStep, check_template, columns_of, produced_columns, refuse_include_generated,
                               step_teachers, step_view)
from datagen.spec.reasoning_models import markers_of
from datagen.store import reads
from datagen.strategies import agreement
from datagen.strategies.base import (Job, PlannedRequest, Round, RowPrompt, StepEstimate, Volume, input_and_demos,
                                     spread)

STEP = LabelStep


# --- plan -----------------------------------------------------------------------------------------------------


def reads_from(step) -> list[tuple[str, tuple]]:
    return input_and_demos(step)


def volume(step: LabelStep, teachers: int, volume_of) -> Volume | None:
    """Every input row gets `n` samples from every teacher; a majority vote keeps one row per input."""
    up = volume_of(step.input)
    if up is None:
        return None
    return Volume(up.rows, 1 if step.vote == "majority" else step.n * teachers)


def template_texts(step) -> list[str]:
    return [t for t in (step.system, step.prompt) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step) -> RowPrompt | None:
    demos = getattr(step, "demos", None)
    return RowPrompt(step.system, step.prompt, demos.as_ if demos is not None else None)


def plan(loaded, plan, shape, i: int, step: LabelStep) -> PlannedStep:
    planned = plan_rows(loaded, shape, i, step, several_teachers=True)
    if step.agreement is not None or step.vote is not None:
        loc = ("steps", i)
        planned.produced.update(agreement.plan_agreement(loaded, loc, step, planned.input_columns, planned.produced,
                                                         len(planned.teachers)))
        planned.view = step_view(step, step.input, planned.input_columns, planned.produced, decisions=step.name,
                                 kept_only=step.vote == "majority", score_column=agreement.COLUMN)
    return planned


def plan_rows(loaded, shape, i: int, step, several_teachers: bool = False) -> PlannedStep:
    """The checks of a step that answers the rows of its input with a prompt (label, and self)."""
    loc = ("steps", i)
    demos = getattr(step, "demos", None)
    refuse_include_generated(loaded, loc, demos)
    names = step_teachers(loaded, loc, step, several=several_teachers)
    input_cols = columns_of(shape, step.input)
    fmt = getattr(step, "response_format", None)
    produced = produced_columns(loaded, loc, step.output, fmt)
    if markers_of(step):
        for col in reasoning.columns(step.output):
            if col in produced:
                raise loaded.error(loc + ("response_format",), f"`{col}` is where the reasoning trace goes; rename "
                                                               "that schema property")
        produced.update(reasoning.columns(step.output))
    for col in produced:
        if col in input_cols:
            where = loc + ("output",) if col == step.output else loc + ("response_format",)
            raise loaded.error(where, f"produced column `{col}` clashes with a column `{step.input}` already has; "
                                      "choose another name")
    if fmt is not None and getattr(step, "thinking", None) is not None:
        raise loaded.error(loc + ("thinking",), "thinking and response_format together are not supported; remove one")
    if fmt is not None and any(loaded.spec.teachers[t].backend in ("transformers", "anthropic") for t in names):
        raise loaded.error(loc + ("response_format",), "structured output needs a `vllm` or `openai` teacher")
    context = set(input_cols) | {"demos"} if (demos and demos.as_ == "variable") else set(input_cols)
    check_template(loaded, loc + ("prompt",), step.prompt, context, step.input)
    if step.system:
        check_template(loaded, loc + ("system",), step.system, context, step.input)
    if demos is not None:
        demo_cols = columns_of(shape, demos.from_)
        for key in ("user", "assistant"):
            col = getattr(demos, key)
            if col is not None and col not in demo_cols:
                raise loaded.error(loc + ("demos", key), f"`{col}` is not a column of `{demos.from_}`; "
                                                         f"columns: {', '.join(c for c in demo_cols if c != '_id')}")
        if demos.as_ == "turns" and demos.user is None:
            check_template(loaded, loc + ("prompt",), step.prompt, set(demo_cols), demos.from_)
    view = step_view(step, step.input, input_cols, produced)
    return PlannedStep(step, i, step.input, input_cols, produced, names, view)


def plan_line(st: PlannedStep) -> str:
    return st.input


# --- requests -------------------------------------------------------------------------------------------------


def draw_demos(demos: DemosSpec, pool: list[dict], row_id: str | None, seed: int, step: str) -> list[dict]:
    """k demo rows for one input, drawn with the run's seed; never the input itself."""
    candidates = [d for d in pool if d["_id"] != row_id]
    rng = random.Random(f"{seed}\0{step}\0{row_id}")
    # kept in pool order, not draw order: inputs that draw the same demos then share a prompt prefix (prefix cache)
    chosen = sorted(rng.sample(range(len(candidates)), min(demos.k, len(candidates))))
    return [candidates[i] for i in chosen]


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def render_messages(step, row: dict, demo_rows: list[dict]) -> list[dict[str, str]]:
    context = public(row)
    messages: list[dict[str, str]] = []
    demos = getattr(step, "demos", None)  # a meta step has none
    as_turns = demos is not None and demos.as_ == "turns"
    if not as_turns and demos is not None:
        context["demos"] = [public(d) for d in demo_rows]
    if step.system:
        messages.append({"role": "system", "content": templates.render(step.system, context)})
    if as_turns:
        for d in demo_rows:
            user = str(d[demos.user]) if demos.user else templates.render(step.prompt, public(d))
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": str(d[demos.assistant])})
    messages.append({"role": "user", "content": templates.render(step.prompt, context)})
    return messages


def build_requests(step, rows: list[dict], demo_pool: list[dict] | None, seed: int, teacher_name: str,
                   teacher_identity: dict, sampling: dict, key_extra: dict | None = None) -> list[PlannedRequest]:
    fmt = getattr(step, "response_format", None)
    schema = fmt.json_schema if fmt else None
    demos = getattr(step, "demos", None)
    out = []
    for row in rows:
        demo_rows = draw_demos(demos, demo_pool or [], row["_id"], seed, step.name) if demos else []
        messages = render_messages(step, row, demo_rows)
        for index in range(step.n):
            key = request_key(step=step.name, parent_id=row["_id"], messages=messages, teacher=teacher_identity,
                              sampling=sampling, json_schema=schema, logprobs=logprobs_key(step), sample_index=index,
                              extra=key_extra)
            out.append(PlannedRequest(key, step.name, row["_id"], index, messages, teacher_name,
                                      [(d["_id"], "demo") for d in demo_rows]))
    return out


def rounds(job: Job) -> Iterator[Round]:
    step = job.step
    rows = reads.rows(job.con, job.st.input)
    demos = getattr(step, "demos", None)
    demo_pool = reads.rows(job.con, demos.from_) if demos else None
    several = len(job.teachers) > 1
    requests = []
    for t in job.teachers:
        # with several teachers, the name is part of the key: two teachers on one model still get their own rows
        extra = reasoning_key(step, {"teacher": t.name} if several else None)
        requests += build_requests(step, rows, demo_pool, job.seed, t.name, t.identity, t.sampling, key_extra=extra)
    yield Round(requests)


def estimate(job: Job, volume_of) -> StepEstimate:
    """Every input to every teacher, `n` times."""
    return StepEstimate(volume_of(job.step.input).rows * job.step.n, known_prompts(job))


def known_prompts(job: Job) -> list[list[dict]]:
    """The prompts of the step's inputs where they are known before the run (a source; not an earlier step)."""
    step = job.step
    demos = getattr(step, "demos", None)
    rows = spread(reads.rows(job.con, step.input))
    pool = reads.rows(job.con, demos.from_) if demos else []
    if demos and not pool:  # demos from an earlier step: the prompts are not known yet
        return []
    out = []
    for row in rows:
        demo_rows = draw_demos(demos, pool, row["_id"], job.seed, step.name) if demos else []
        out.append(render_messages(step, row, demo_rows))
    return out


def reasoning_key(step, extra: dict | None) -> dict | None:
    """A trace kept apart (and its budget) changes what a row holds, so it is part of the key, only when set: the
    keys of steps without it never change."""
    markers = markers_of(step)
    if not markers:
        return extra
    thinking = getattr(step, "thinking", None)
    return {**(extra or {}), "reasoning": markers.model_dump(),
            **({"thinking": thinking.model_dump()} if thinking is not None else {})}


# --- replies --------------------------------------------------------------------------------------------------


def json_schema(step) -> dict | None:
    fmt = getattr(step, "response_format", None)
    return fmt.json_schema if fmt else None


def parse(step, text: str, req: PlannedRequest, sample=None) -> tuple[dict[str, Any] | None, str | None]:
    """Produced fields (besides the output text) or the reason the reply is unusable."""
    fields, error = parse_json(step, text)
    if error is None and markers_of(step):
        fields.update(reasoning.fields(step.output, sample.reasoning if sample is not None else None))
    return fields, error


def parse_json(step, text: str) -> tuple[dict[str, Any] | None, str | None]:
    """With a response schema, the reply's JSON fields (the answer's, once a trace is split off)."""
    schema = json_schema(step)
    if schema is None:
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"reply is not valid JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}"
    if not isinstance(value, dict):
        return None, f"reply JSON is a {type(value).__name__}, the schema wants an object"
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return None, f"reply does not match the schema: {exc.message}"
    return {k: value.get(k) for k in schema["properties"]}, None


def finish(job: Job) -> None:
    if job.step.agreement is not None:
        agreement.decide(job.con, job.st)


def status_lines(con, st: PlannedStep) -> list[str]:
    return []


def card_notes(step) -> list[str]:
    notes = input_notes(step) + reasoning_notes(step)
    if step.agreement is not None:
        notes.append(f"answer agreement on `{step.agreement.column}`" + ("; majority vote" if step.vote else ""))
    return notes


def input_notes(step) -> list[str]:
    """How the prompt was built: its demos and a response schema (label, self and meta steps)."""
    notes = []
    demos = getattr(step, "demos", None)
    if demos is not None:
        notes.append(f"{demos.k} demos from `{demos.from_}` as {demos.as_}")
    if getattr(step, "response_format", None) is not None:
        notes.append("structured output (JSON schema)")
    return notes


def reasoning_notes(step) -> list[str]:
    if not markers_of(step):
        return []
    notes = [f"reasoning trace kept apart in `{reasoning.trace_column(step.output)}`"]
    t = getattr(step, "thinking", None)
    if t is not None:
        bounds = [f"at most {t.max_tokens}" if t.max_tokens else "", f"at least {t.min_tokens}" if t.min_tokens else ""]
        notes.append("trace budget-forced (s1): " + (" and ".join(b for b in bounds if b) or "no bounds") + " tokens")
    return notes
