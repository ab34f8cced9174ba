"""Plan-time checks of an `expand` step: everything it names exists and fits, before any model loads."""

from __future__ import annotations

from datagen.spec.load import LoadedSpec
from datagen.spec.models import ExpandStep
from datagen.spec.plan import Plan, PlannedStep, check_template, columns_of, produced_columns, step_teachers


def plan_expand(loaded: LoadedSpec, plan: Plan, shape, i: int, step: ExpandStep) -> PlannedStep:
    loc = ("steps", i)
    if isinstance(step.teacher, list):
        raise loaded.error(loc + ("teacher",), "several teachers for one step are for `strategy: label`; "
                                               "name one teacher here")
    names = step_teachers(loaded, loc, step)
    if step.n != 1:
        raise loaded.error(loc + ("n",), "an expand step sends `batch` requests per round, each with its own demos; "
                                         "remove `n` (or set it to 1)")
    demos = step.demos
    if demos.as_ == "turns":
        raise loaded.error(loc + ("demos", "as"), "an expand step shows its demos inside the prompt: remove "
                                                  "`as: turns` and loop over `demos` in the prompt template")
    demo_cols = columns_of(shape, demos.from_)
    shown = ", ".join(c for c in demo_cols if not c.startswith("_"))
    if demos.include_generated and step.output not in demo_cols:
        raise loaded.error(loc + ("output",), f"with include_generated, new items are shown as demos beside the rows "
                                              f"of `{demos.from_}`, so `output` must be one of its columns: {shown}")
    if step.novelty is not None:
        nov = step.novelty
        column = nov.column or step.output
        if column not in demo_cols:
            key = "column" if nov.column else None
            raise loaded.error(loc + ("novelty",) + ((key,) if key else ()),
                               f"novelty compares new items with `{demos.from_}`'s `{column}` column, which it does "
                               f"not have; set novelty.column to one of: {shown}")
        if nov.max_rouge_l is None and nov.max_cosine is None:
            raise loaded.error(loc + ("novelty",), "novelty needs max_rouge_l (e.g. 0.7) and/or max_cosine "
                                                   "(e.g. 0.9)")
        if nov.max_cosine is not None:
            from datagen.bundled import model_identity

            try:
                model_identity(nov.model, loaded.dir)
            except ValueError as exc:
                raise loaded.error(loc + ("novelty", "model"), str(exc)) from None
    context = {"demos"}
    check_template(loaded, loc + ("prompt",), step.prompt, context, step.name)
    if step.system:
        check_template(loaded, loc + ("system",), step.system, context, step.name)
    produced = produced_columns(loaded, loc, step.output, None)
    return PlannedStep(step, i, None, [], produced, names)
