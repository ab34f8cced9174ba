"""A strategy written by CONTRIBUTING.md's recipe, "Adding a strategy", and nothing else: `rewrite` asks the teacher
to say a column of another relation's rows in other words. In the project it would be `datagen/strategies/rewrite.py`
plus the line `add(rewrite)` in `datagen/strategies/__init__.py`; tests/test_recipes.py imports it from here, makes
that one `add` call, and runs it end to end against the scripted server.
"""

from __future__ import annotations

from typing import Literal

from datagen import templates
from datagen.keys import logprobs_key, request_key
from datagen.spec.models import StepBase
from datagen.spec.plan import PlannedStep, check_clash, check_template, columns_of, produced_columns, step_teachers, \
    step_view
from datagen.store import reads
from datagen.strategies.base import Job, PlannedRequest, Round, StepEstimate, Volume


class RewriteStep(StepBase):
    strategy: Literal["rewrite"]
    input: str
    column: str  # the column to say in other words
    prompt: str = "Say this in other words: {{ text }}"


STEP = RewriteStep


# --- what it reads, how many rows it makes, its templates -------------------------------------------------------


def reads_from(step: RewriteStep) -> list[tuple[str, tuple]]:
    return [(step.input, ("input",))]


def volume(step: RewriteStep, teachers: int, volume_of) -> Volume | None:
    up = volume_of(step.input)
    return Volume(up.rows, step.n) if up is not None else None


def template_texts(step: RewriteStep) -> list[str]:
    return [t for t in (step.system, step.prompt) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step) -> None:
    return None  # its prompt shows one column under the name `text`, not an input row's columns


# --- plan -----------------------------------------------------------------------------------------------------


def plan(loaded, plan, shape, i: int, step: RewriteStep) -> PlannedStep:
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    cols = columns_of(shape, step.input)
    if step.column not in cols:
        raise loaded.error(loc + ("column",), f"`{step.column}` is not a column of `{step.input}`; columns: "
                                              f"{', '.join(c for c in cols if not c.startswith('_'))}")
    produced = produced_columns(loaded, loc, step.output, None)
    check_clash(loaded, loc, produced, cols, step.input)
    check_template(loaded, loc + ("prompt",), step.prompt, {"text"}, step.input)
    return PlannedStep(step, i, step.input, cols, produced, names, step_view(step, step.input, cols, produced))


def plan_line(st: PlannedStep) -> str:
    return f"{st.spec.column} of {st.input}"


# --- requests and replies ---------------------------------------------------------------------------------------


def rounds(job: Job):
    step: RewriteStep = job.step
    out = []
    for t in job.teachers:
        for row in reads.rows(job.con, step.input):
            messages = [{"role": "user", "content": templates.render(step.prompt, {"text": row[step.column]})}]
            for index in range(step.n):
                key = request_key(step=step.name, parent_id=row["_id"], messages=messages, teacher=t.identity,
                                  sampling=t.sampling, json_schema=None, logprobs=logprobs_key(step),
                                  sample_index=index)
                out.append(PlannedRequest(key, step.name, row["_id"], index, messages, t.name))
    yield Round(out)


def json_schema(step) -> None:
    return None


def parse(step, text: str, req, sample=None) -> tuple[dict | None, str | None]:
    return ({}, None) if text.strip() else (None, "the rewrite is empty")


def finish(job: Job) -> None:
    return None


def status_lines(con, st: PlannedStep) -> list[str]:
    return []


def card_notes(step: RewriteStep) -> list[str]:
    return [f"`{step.column}` of `{step.input}` rewritten"]


def estimate(job: Job, volume_of) -> StepEstimate:
    return StepEstimate(volume_of(job.step.input).rows * job.step.n, [])
