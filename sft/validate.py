"""What `datagen validate` checks about the `train:` block, without loading a model.

The rows to train on must be a generation step's rows (chat turns to learn from); `objective: kd` needs the
teacher's stored top-k logprobs, so the step that wrote those rows must have `logprobs:` set.
"""

from __future__ import annotations

from datagen.errors import UserError
from datagen.spec.load import LoadedSpec


def check_train(loaded: LoadedSpec, plan) -> None:
    train = loaded.spec.train
    if train is None:
        return
    from datagen.export import resolve_input

    if train.objective == "dpo":
        from sft.dpo import check_dpo

        return check_dpo(loaded, plan)
    try:
        inp = resolve_input(plan, train.input)
    except UserError as exc:
        raise loaded.error(("train", "input"), str(exc)) from None
    if inp.step is None:
        raise loaded.error(("train", "input"), f"`{inp.name}` holds a source's rows, which have no teacher output "
                                               "to train on; name a generation step (or `curated` over one)")
    if train.objective == "kd" and not inp.step.spec.logprobs:
        raise loaded.error(("train", "objective"), f"`objective: kd` trains on the teacher's stored top-k logprobs, "
                                                   f"and step `{inp.step.name}` keeps none: add `logprobs: 5` "
                                                   "(1 to 20) to it and re-run, or use `objective: sft`")
    if train.student.startswith("bundled:"):
        from datagen.bundled import SMOLLM2

        if train.student != SMOLLM2:
            raise loaded.error(("train", "student"), f"unknown bundled model `{train.student}`; the bundled chat "
                                                     f"model is {SMOLLM2}")
