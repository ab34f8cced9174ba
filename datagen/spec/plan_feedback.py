"""Planning the feedback and self-knowledge steps (`strategy: judge` and `strategy: self`).

A judge reads an earlier generation step's rows: the prompt each row answered (its stored request) and its output
are what the judge sees, and they become a preference pair's prompt and sides. Its produced columns depend on the
mode: a score (`<output>`, a number) and `<output>_reason`; with `pairwise: true` a verdict per ordered pair
(`<output>` is `A`, `B` or `tie`, `<output>_reason`, `<output>_other`: the `_id` of the row shown as B); with
`revise: true` the corrected answer (`<output>`). A self step is a labeling step whose rows are then kept or dropped
by agreement or a verifier; it adds `<output>_answer`, the extracted final answer.
"""

from __future__ import annotations

from datagen.spec.models import JudgeStep, SelfStep

JUDGE_VARIABLES = {"rubric", "task", "response", "low", "high"}
PAIRWISE_VARIABLES = {"rubric", "task", "response_a", "response_b"}


def plan_feedback_step(loaded, plan, shape, i: int, step):
    if isinstance(step, JudgeStep):
        return _plan_judge(loaded, plan, shape, i, step)
    return _plan_self(loaded, plan, shape, i, step)


def _check_teacher(loaded, loc: tuple, step) -> None:
    if step.teacher not in loaded.spec.teachers:
        raise loaded.error(loc + ("teacher",), f"no teacher named `{step.teacher}`; teachers: "
                                                f"{', '.join(loaded.spec.teachers)}")


def judge_produced(step: JudgeStep) -> dict[str, str]:
    out = step.output
    if step.revise:
        return {out: "VARCHAR"}
    if step.pairwise:
        return {out: "VARCHAR", f"{out}_reason": "VARCHAR", f"{out}_other": "VARCHAR"}
    return {out: "DOUBLE", f"{out}_reason": "VARCHAR"}


def _check_clash(loaded, loc: tuple, produced: dict, input_cols: list[str], input_name: str) -> None:
    for col in produced:
        if col in input_cols:
            raise loaded.error(loc + ("output",), f"produced column `{col}` clashes with a column `{input_name}` "
                                                  "already has; choose another `output`")


def _plan_judge(loaded, plan, shape, i: int, step: JudgeStep):
    from datagen.spec.plan import PlannedStep, _check_template, _columns

    loc = ("steps", i)
    _check_teacher(loaded, loc, step)
    judged = {s.name: s for s in plan.steps}.get(step.input)
    if judged is None:
        raise loaded.error(loc + ("input",), f"a judge reads an earlier generation step's rows (their prompt and "
                                             f"output are what it judges); `{step.input}` is a source: label it in a "
                                             "step first and judge that step")
    if not judged.output_is_text:
        raise loaded.error(loc + ("input",), f"`{step.input}` is itself a judge of scores or verdicts; judge the "
                                             "step that wrote the answers")
    if step.verdict_format == "json" and loaded.spec.teachers[step.teacher].backend == "transformers":
        raise loaded.error(loc + ("verdict_format",), "a JSON verdict needs structured output: a `vllm` or `openai` "
                                                      "teacher; use `verdict_format: text` with transformers")
    input_cols = _columns(shape, step.input)
    produced = judge_produced(step)
    _check_clash(loaded, loc, produced, input_cols, step.input)
    variables = PAIRWISE_VARIABLES if step.pairwise else JUDGE_VARIABLES
    context = set(input_cols) | variables
    _check_template(loaded, loc + ("rubric",), step.rubric, set(input_cols), step.input)
    if step.prompt:
        _check_template(loaded, loc + ("prompt",), step.prompt, context, step.input)
    if step.system:
        _check_template(loaded, loc + ("system",), step.system, context, step.input)
    return PlannedStep(step, i, step.input, input_cols, produced, [step.teacher],
                       output_is_text=step.revise)


def _plan_self(loaded, plan, shape, i: int, step: SelfStep):
    from datagen.spec.plan import _plan_step

    loc = ("steps", i)
    _check_teacher(loaded, loc, step)
    planned = _plan_step(loaded, plan, shape, i, step)
    answer = f"{step.output}_answer"
    _check_clash(loaded, loc, {answer: "VARCHAR"}, planned.input_columns, step.input)
    planned.produced[answer] = "VARCHAR"
    if step.reference is not None and step.reference not in planned.input_columns:
        cols = ", ".join(c for c in planned.input_columns if not c.startswith("_"))
        raise loaded.error(loc + ("reference",), f"`{step.reference}` is not a column of `{step.input}`; "
                                                 f"columns: {cols}")
    # the view shows the kept samples; the dropped ones are in `decisions` with their reason
    planned.view_filter = (f"o._id IN (SELECT row_id FROM decisions WHERE stage = '{self_stage(step.name)}' "
                           "AND kept)")
    return planned


def self_stage(step_name: str) -> str:
    return f"self:{step_name}"


def pairs_stage(step_name: str) -> str:
    return f"pairs:{step_name}"
