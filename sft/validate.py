"""What `datagen validate` checks about the `train:` block, without loading a model.

The rows to train on must be a generation step's rows (chat turns to learn from); `objective: kd` needs the
teacher's stored top-k logprobs, so the step that wrote those rows must have `logprobs:` set. `eval.source` must be
a source the student never trained on, with the named columns, whose rows the step's prompt can render;
`kd.hidden` needs a teacher whose hidden states the student's can be compared with (sft/hidden.py).
"""

from __future__ import annotations

from datagen.errors import UserError
from datagen.spec.load import LoadedSpec


def check_train(loaded: LoadedSpec, plan) -> None:
    train = loaded.spec.train
    if train is None:
        return
    from datagen.publish.export import resolve_input

    if train.heal is not None:
        check_heal(loaded, plan)
    if train.objective == "onpolicy":
        return check_onpolicy(loaded, plan)
    if train.objective == "dpo":
        from sft.dpo import check_dpo

        check_dpo(loaded, plan)
        judge = resolve_input(plan, train.input, "preference").step
        return check_eval(loaded, plan, plan.step(judge.spec.input))  # the judged step wrote the answers
    try:
        inp = resolve_input(plan, train.input)
    except UserError as exc:
        raise loaded.error(("train", "input"), str(exc)) from None
    if inp.step is None:
        return check_source_input(loaded, plan, inp)
    if train.objective == "kd" and not inp.step.spec.logprobs:
        raise loaded.error(("train", "objective"), f"`objective: kd` trains on the teacher's stored top-k logprobs, "
                                                   f"and step `{inp.step.name}` keeps none: add `logprobs: 5` "
                                                   "(1 to 20) to it and re-run, or use `objective: sft`")
    if train.objective == "kd":
        for name in inp.step.teachers:
            check_shared_tokenizer(loaded, name, ("train", "student"))
    if train.student.startswith("bundled:"):
        from datagen.bundled import SMOLLM2

        if train.student != SMOLLM2:
            raise loaded.error(("train", "student"), f"unknown bundled model `{train.student}`; the bundled chat "
                                                     f"model is {SMOLLM2}")
    if train.chat_template is not None and not loaded.resolve_path(train.chat_template).is_file():
        raise loaded.error(("train", "chat_template"), f"file not found: {loaded.resolve_path(train.chat_template)}; "
                                                       "give a Jinja chat template file (relative to the spec)")
    if train.objective == "kd" and train.kd.hidden is not None:
        from sft.hidden import check_hidden

        check_hidden(loaded)
    check_eval(loaded, plan, inp.step)


def check_heal(loaded: LoadedSpec, plan) -> None:
    """`train.heal.input`: a step, `curated`, or a source with `prompt` and `completion` columns (sft/heal.py)."""
    from datagen.publish.export import resolve_input

    at = ("train", "heal", "input")
    try:
        inp = resolve_input(plan, loaded.spec.train.heal.input)
    except UserError as exc:
        raise loaded.error(at, str(exc)) from None
    if inp.step is None and not {"prompt", "completion"} <= set(inp.columns):
        shown = ", ".join(c for c in inp.columns if not c.startswith("_")) or "none"
        raise loaded.error(at, f"source `{inp.name}` has no `prompt` and `completion` columns (its columns: "
                               f"{shown}); the heal trains on prompt/completion text: give the source those "
                               "columns, or name a step")


def check_source_input(loaded: LoadedSpec, plan, inp) -> None:
    """A source as `train.input`: gold answers in a `completion` column, trained by `sft` (sft/rows.py)."""
    from datagen.spec.plan import check_template

    train, columns = loaded.spec.train, list(inp.columns)
    shown = ", ".join(c for c in columns if not c.startswith("_")) or "none"
    if "completion" not in columns or ("prompt" not in columns and train.prompt is None):
        raise loaded.error(("train", "input"), f"`{inp.name}` holds a source's rows, which have no teacher output; a "
                                               "source trains only with `prompt` and `completion` columns (gold "
                                               f"answers; its columns: {shown}); name a generation step (or "
                                               "`curated` over one), or give the source those columns")
    if train.objective == "kd":
        raise loaded.error(("train", "objective"), f"`objective: kd` trains on a teacher's soft labels, and source "
                                                   f"`{inp.name}` has answers only; use `objective: sft`, or train "
                                                   "on a step with `logprobs:` (a `score` step scores given text)")
    for key in ("prompt", "system"):
        if getattr(train, key):
            check_template(loaded, ("train", key), getattr(train, key), set(columns), inp.name)
    check_prompted_eval(loaded, plan, inp.name)


def check_prompted_eval(loaded: LoadedSpec, plan, input_name: str) -> None:
    """`eval.source` when `train.prompt` / `train.system` put the questions (gold sources, on-policy prompts)."""
    train = loaded.spec.train
    spec = train.eval
    if spec is None or spec.source is None:
        return
    if spec.source == input_name:
        raise loaded.error(("train", "eval", "source"), f"the student trains on `{spec.source}`'s rows, so it cannot "
                                                        "measure what the student never saw; name another source")
    cols = plan.source_columns.get(spec.source)
    if cols is None:
        raise loaded.error(("train", "eval", "source"), f"`{spec.source}` is not a source of this spec; add it under "
                                                        "`sources:`")
    for key in ("prompt", "reference"):
        if getattr(spec, key) not in cols:
            raise loaded.error(("train", "eval", key), f"`{getattr(spec, key)}` is not a column of source "
                                                       f"`{spec.source}`")
    from sft.eval_source import template_binding

    missing = sorted(v for v, col in template_binding(train, spec.prompt).items() if col not in cols)
    if missing:
        raise loaded.error(("train", "eval", "source"), f"train.prompt / train.system read {missing}, which source "
                                                        f"`{spec.source}` lacks; add the columns or set eval.prompt "
                                                        "to the one that fills the template's variable")


def check_onpolicy(loaded: LoadedSpec, plan) -> None:
    """`objective: onpolicy`: prompts from a source or step, a teacher that can score given text and shares the
    student's tokenizer."""
    from datagen.spec.plan import check_template

    train, op = loaded.spec.train, loaded.spec.train.onpolicy
    columns = plan.source_columns.get(train.input)
    if columns is None:
        step = next((s for s in plan.steps if s.name == train.input), None)
        if step is None:
            known = ", ".join(list(plan.source_columns) + [s.name for s in plan.steps]) or "none"
            raise loaded.error(("train", "input"), f"`{train.input}` is not a source or step of this spec (known: "
                                                   f"{known}); name the rows whose prompts the student answers")
        columns = list(step.input_columns) + list(step.produced)
    for key in ("prompt", "system"):
        if getattr(train, key):
            check_template(loaded, ("train", key), getattr(train, key), set(columns), train.input)
    teacher = loaded.spec.teachers.get(op.teacher)
    if teacher is None:
        raise loaded.error(("train", "onpolicy", "teacher"), f"no teacher named `{op.teacher}`; teachers: "
                                                             f"{', '.join(loaded.spec.teachers) or 'none'}")
    if teacher.backend == "anthropic" or (teacher.backend == "openai" and teacher.batch.enabled):
        raise loaded.error(("train", "onpolicy", "teacher"), f"teacher `{op.teacher}` cannot score the student's "
                                                             "samples (its API returns no log-probabilities of given "
                                                             "text); use a vllm or transformers teacher, or vLLM's "
                                                             "OpenAI-compatible server without batch")
    check_shared_tokenizer(loaded, op.teacher, ("train", "onpolicy", "teacher"))
    check_prompted_eval(loaded, plan, train.input)


def check_shared_tokenizer(loaded: LoadedSpec, teacher_name: str, at: tuple) -> None:
    """Token-level distillation compares the teacher's and the student's distributions id by id, so they must
    share a tokenizer. Checked here where both vocabularies are on disk (local folders, or the bundled model once
    converted); training checks again after loading, and maps a remote teacher's token strings."""
    import json

    from datagen.bundled import ready_folder

    teacher = loaded.spec.teachers.get(teacher_name)
    student = loaded.spec.train.student
    if teacher is None or teacher.backend not in ("vllm", "transformers") or teacher.model == student:
        return
    folders = [ready_folder(teacher.model, loaded.dir), ready_folder(student, loaded.dir)]
    if None in folders:
        return
    vocabs = []
    for folder in folders:
        path = folder / "tokenizer.json"
        if not path.is_file():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        added = [t.get("content") for t in data.get("added_tokens", [])]
        vocabs.append(((data.get("model") or {}).get("vocab"), added))
    if vocabs[0] != vocabs[1]:
        size = [len(v[0] or {}) for v in vocabs]
        raise loaded.error(at, f"teacher `{teacher_name}` ({teacher.model}, {size[0]} tokens) and the student "
                               f"({student}, {size[1]} tokens) do not share a tokenizer, and token-level distillation "
                               "compares their distributions id by id; use a student of the teacher's family (or "
                               "`init: truncate` of the teacher's model), or `objective: sft`")


def check_eval(loaded: LoadedSpec, plan, step) -> None:
    """`eval.source`: a source of the spec, not one the trained rows answer, with the named columns, whose rows the
    step's prompt template can render."""
    spec = loaded.spec.train.eval
    if spec is None or spec.source is None:
        return
    from sft.eval_source import check_columns

    at = ("train", "eval")
    columns = plan.source_columns.get(spec.source)
    if columns is None or spec.source not in loaded.spec.sources:
        known = ", ".join(loaded.spec.sources) or "none"
        raise loaded.error(at + ("source",), f"`{spec.source}` is not a source of this spec (sources: {known}); "
                                             "add it under `sources:`")
    if spec.source in trained_sources(plan, step):
        raise loaded.error(at + ("source",), f"the student trains on answers to `{spec.source}`'s rows (step "
                                             f"`{step.name}` reads it), so it cannot measure what the student never "
                                             "saw; name another source, for example a test split")
    for key in ("prompt", "reference"):
        column = getattr(spec, key)
        if column not in columns:
            raise loaded.error(at + (key,), f"`{column}` is not a column of source `{spec.source}`; columns: "
                                            f"{', '.join(c for c in columns if not c.startswith('_'))}")
    try:
        missing = check_columns(step.spec, spec.prompt, columns)
    except ValueError as exc:
        raise loaded.error(at + ("source",), str(exc)) from None
    if missing:
        raise loaded.error(at + ("source",), f"step `{step.name}`'s templates read {missing}, which source "
                                             f"`{spec.source}` lacks; add the columns or set eval.prompt to the one "
                                             "that fills the template's variable")


def trained_sources(plan, step) -> set[str]:
    """The sources whose rows the step's chain of inputs reads (the student answers those)."""
    found: set[str] = set()
    seen: set[str] = set()
    current = step
    while current is not None and current.input is not None and current.input not in seen:
        seen.add(current.input)
        if current.input in plan.source_columns:
            found.add(current.input)
            break
        current = next((s for s in plan.steps if s.name == current.input), None)
    return found
