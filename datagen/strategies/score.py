"""Scoring: the teacher reads text it did not write and keeps its soft labels on it (feature knowledge on given text:
(x, y from any source, the teacher's top-k at every token of y)).

Each input row's `response` column is put after the rendered prompt as the assistant's reply; the teacher runs the
prompt and the response through its model once (prefill only: nothing is sampled) and gives back the top-k
log-probabilities (`logprobs: k`) it assigns at each response token. They are stored exactly as generation stores
them (datagen/store/soft_labels.py), so `objective: kd` trains on scored rows unchanged: a human dataset, another
teacher's traces, a stronger API model's answers, or the student's own samples (on-policy distillation,
sft/onpolicy.py). The output column holds the response text; the stored tokens spell it back exactly.

In-process teachers (vllm: prompt log-probabilities; transformers: one forward pass) score any text. Over HTTP the
teacher must be vLLM's OpenAI-compatible server (its /tokenize endpoint and `prompt_logprobs`); a server without them
fails each request with the reason. Batch APIs and Anthropic return no log-probabilities of given text: refused at
validation.
"""

from __future__ import annotations

from datagen import templates
from datagen.keys import request_key
from datagen.spec.models import ScoreStep
from datagen.spec.plan import PlannedStep, check_clash, check_template, columns_of, step_teachers, step_view
from datagen.store import reads
from datagen.strategies.base import Job, PlannedRequest, Round, RowPrompt, StepEstimate, Volume, spread
from datagen.strategies.label import public

STEP = ScoreStep


def reads_from(step: ScoreStep) -> list[tuple[str, tuple]]:
    return [(step.input, ("input",))]


def volume(step: ScoreStep, teachers: int, volume_of) -> Volume | None:
    up = volume_of(step.input)
    return Volume(up.rows, 1) if up is not None else None


def template_texts(step: ScoreStep) -> list[str]:
    return [t for t in (step.system, step.prompt) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step: ScoreStep) -> RowPrompt:
    return RowPrompt(step.system, step.prompt, None)


def plan(loaded, plan, shape, i: int, step: ScoreStep) -> PlannedStep:
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    spec = loaded.spec.teachers[names[0]]
    if spec.backend == "anthropic" or (spec.backend == "openai" and spec.batch.enabled):
        what = "Anthropic's API" if spec.backend == "anthropic" else "a batch API"
        raise loaded.error(loc + ("teacher",), f"a score step needs the teacher's log-probabilities of given text, "
                                               f"and {what} returns none; use a vllm or transformers teacher, or "
                                               "vLLM's OpenAI-compatible server (batch.enabled: false)")
    cols = columns_of(shape, step.input)
    if step.response not in cols:
        raise loaded.error(loc + ("response",), f"`{step.response}` is not a column of `{step.input}`; columns: "
                                                f"{', '.join(c for c in cols if not c.startswith('_'))}")
    produced = {step.output: "VARCHAR"}
    check_clash(loaded, loc, produced, cols, step.input)
    for key in ("system", "prompt"):
        if getattr(step, key):
            check_template(loaded, loc + (key,), getattr(step, key), set(cols), step.input)
    view = step_view(step, step.input, cols, produced)
    return PlannedStep(step, i, step.input, cols, produced, names, view)


def plan_line(st: PlannedStep) -> str:
    return f"{st.input}, scoring `{st.spec.response}`"


def messages_of(step: ScoreStep, row: dict) -> list[dict[str, str]]:
    context = public(row)
    system = [{"role": "system", "content": templates.render(step.system, context)}] if step.system else []
    return system + [{"role": "user", "content": templates.render(step.prompt, context)}]


def rounds(job: Job):
    """One request per input row with a response: the prompt, the text and k are what a score depends on (no
    sampling parameters)."""
    step: ScoreStep = job.step
    teacher = job.teachers[0]
    requests = []
    for row in reads.rows(job.con, step.input):
        text = row.get(step.response)
        if text is None or str(text) == "":
            continue  # nothing to score (the row stays out of the view)
        messages = messages_of(step, row)
        key = request_key(step=step.name, parent_id=row["_id"], messages=messages, teacher=teacher.identity,
                          sampling={}, json_schema=None, logprobs=step.logprobs, sample_index=0,
                          extra={"score": str(text)})
        requests.append(PlannedRequest(key, step.name, row["_id"], 0, messages, teacher.name,
                                       continuation=str(text)))
    yield Round(requests)


def json_schema(step) -> None:
    return None


def parse(step, text: str, req: PlannedRequest, sample=None) -> tuple[dict | None, str | None]:
    if text != req.continuation:  # a backend that changed the text would store soft labels of other tokens
        return None, "the teacher's scored text differs from the response it was given"
    if sample is not None and not sample.logprobs:
        return None, "the teacher returned no log-probabilities for the response"
    return {}, None


def finish(job: Job) -> None:
    return None


def status_lines(con, st: PlannedStep) -> list[str]:
    return []


def card_notes(step: ScoreStep) -> list[str]:
    return [f"scored: `{step.response}` read by the teacher (top-{step.logprobs} log-probabilities at each token; "
            "nothing sampled)"]


def estimate(job: Job, volume_of) -> StepEstimate:
    """One request per input row; a response is prompt tokens (read, not written): the estimate counts it there."""
    step: ScoreStep = job.step
    prompts = []
    for row in spread(reads.rows(job.con, step.input)):
        prompts.append(messages_of(step, row) + [{"role": "assistant", "content": str(row.get(step.response) or "")}])
    return StepEstimate(volume_of(step.input).rows, prompts)
