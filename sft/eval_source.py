"""`train.eval.source`: score the student on a source it never trained on, against that source's reference answers.

Each row of the source becomes a record shaped like a training row: `prompt` is the conversation the training
step's requests open with, rendered for this row, and `completion` is the row's reference answer (the human-written
solution, not a teacher's). The prompt is rendered the way the step rendered its own requests:

- the step's `system` template, rendered with the row (so the same system prompt);
- with `demos: {as: turns}`, the demo turns of the first training row's stored request (demos are drawn per input;
  one fixed set keeps every eval prompt alike);
- the step's `prompt` template, rendered with the row's columns, where the `eval.prompt` column is passed under the
  name of the template variable it stands for: that same name when the template reads it, else the template's only
  variable (so a source whose question column is `problem` fits a template that reads `{{ question }}`).

A template that reads `demos` as a variable is refused: its demos differ per input and are not stored as turns.
The records are scored by `sft.evaluate.evaluate` (reference NLL per token, and accuracy by the spec's verifiers,
whose reference column becomes `eval.reference`), and the metrics are named `reference_*`.
"""

from __future__ import annotations

from datagen import templates
from datagen.errors import UserError
from datagen.strategies.base import RowPrompt

PREFIX = "reference_"


def row_prompt(step_spec) -> RowPrompt:
    """How the step renders an input row (its strategy says). Raises ValueError (with what to change) when it does
    not render its prompt from input rows."""
    from datagen.strategies import strategy_of

    found = strategy_of(step_spec).row_prompt(step_spec)
    if found is None:
        raise ValueError(f"step `{step_spec.name}` ({step_spec.strategy}) does not render its prompt from input rows, "
                         "so a source's questions cannot be put to the student the same way; train on a label step")
    return found


def binding(step_spec, prompt_column: str) -> dict[str, str]:
    """Template variable -> source column for the step's prompt and system templates. Raises ValueError (with what
    to change) when the step cannot render a source row."""
    how = row_prompt(step_spec)
    prompt = how.prompt
    reads = templates.variables(prompt) | templates.variables(how.system or "")
    if "demos" in reads and how.demos_as != "turns":
        raise ValueError(f"step `{step_spec.name}` shows its demos through the `demos` template variable, which "
                         "differs per input; eval.source needs `demos: {as: turns}` or no demos")
    names = templates.variables(prompt) - {"demos"}
    out = {name: name for name in reads - {"demos"}}
    if prompt_column not in names:
        if len(names) != 1:
            raise ValueError(f"step `{step_spec.name}`'s prompt reads {sorted(names)}, none named `{prompt_column}`; "
                             "set eval.prompt to the source column that fills one of them")
        out[next(iter(names))] = prompt_column
    return out


def check_columns(step_spec, prompt_column: str, columns: list[str]) -> list[str]:
    """The template variables the source cannot fill (empty when every one is a column of the source)."""
    return sorted(v for v, col in binding(step_spec, prompt_column).items() if col not in columns)


def render_prompt(how: RowPrompt, row: dict, mapping: dict[str, str], demo_turns: list[dict]) -> list[dict]:
    context = {var: row[col] for var, col in mapping.items()}
    messages = []
    if how.system:
        messages.append({"role": "system", "content": templates.render(how.system, context)})
    messages += demo_turns
    messages.append({"role": "user", "content": templates.render(how.prompt, context)})
    return messages


def demo_turns(train_records: list[dict]) -> list[dict]:
    """The demo turns of the first training row's request: its messages between the system turn and the prompt."""
    if not train_records:
        return []
    turns = train_records[0]["prompt"][:-1]
    return [m for m in turns if m["role"] != "system"]


def source_records(loaded, plan, step_name: str, train_records: list[dict]) -> list[dict]:
    """The eval source's rows as {prompt, completion, row} records (rows without a reference are left out)."""
    settings = loaded.spec.train.eval
    step_spec = plan.step(step_name).spec
    mapping = binding(step_spec, settings.prompt)
    how = row_prompt(step_spec)
    demos = demo_turns(train_records) if how.demos_as is not None else []
    rows = plan.source_rows.get(settings.source)
    if rows is None:  # a `query` source: a view in the store
        rows = read_source(loaded.store_path, settings.source)
    records = []
    for row in rows:
        reference = row.get(settings.reference)
        if reference is None or not str(reference).strip():
            continue
        records.append({"prompt": render_prompt(how, row, mapping, demos),
                        "completion": [{"role": "assistant", "content": str(reference)}], "row": dict(row)})
    if not records:
        raise UserError(f"train.eval.source: `{settings.source}` has no rows with a `{settings.reference}` reference "
                        "to score against")
    return records


def template_records(loaded, plan, train) -> list[dict]:
    """eval.source's rows put the way a source of gold answers trains (sft/rows.py source_record): `train.system`,
    then `train.prompt` rendered with the row, where the `eval.prompt` column fills the template variable of that
    name or else the template's only variable; without `train.prompt`, the `eval.prompt` column is the user turn."""
    spec = train.eval
    rows = plan.source_rows.get(spec.source)
    if rows is None:  # a `query` source: a view in the store
        rows = read_source(loaded.store_path, spec.source)
    how = RowPrompt(train.system, train.prompt or "{{ prompt }}", None)
    mapping = template_binding(train, spec.prompt)
    records = [{"prompt": render_prompt(how, row, mapping, []),
                "completion": [{"role": "assistant", "content": str(row[spec.reference])}], "row": dict(row)}
               for row in rows if str(row.get(spec.reference) or "").strip()]
    if not records:
        raise UserError(f"train.eval.source: `{spec.source}` has no rows with a `{spec.reference}` reference to "
                        "score against")
    return records


def template_binding(train, prompt_column: str) -> dict[str, str]:
    """Template variable -> source column for `train.prompt` / `train.system` (what template_records renders)."""
    prompt = train.prompt or "{{ prompt }}"
    names = templates.variables(prompt) | templates.variables(train.system or "")
    mapping = {name: name for name in names}
    if prompt_column not in names and len(templates.variables(prompt)) == 1:
        mapping[next(iter(templates.variables(prompt)))] = prompt_column
    return mapping


def read_source(store_path, name: str) -> list[dict]:
    """Every row of a source's view in the store."""
    from datagen.store import reads
    from datagen.store.connection import open_store

    con = open_store(store_path, read_only=True)
    try:
        return reads.rows(con, name)
    except Exception as exc:  # noqa: BLE001  a missing view: the spec has not been run
        raise UserError(f"train.eval.source: cannot read `{name}` from the store ({type(exc).__name__}); run "
                        "`datagen run SPEC` first") from None
    finally:
        con.close()


def source_verifiers(checks: list, reference_column: str, columns: list[str]) -> list:
    """The spec's verifiers, re-pointed at the eval source: verify_math compares with `eval.reference`;
    verify_code runs the tests column of the same name, so it is kept only when the source has one."""
    from sft.evaluate import Verifier

    out = []
    for c in checks:
        if c.spec.type == "verify_math":
            out.append(Verifier(c.label, c.spec.model_copy(update={"reference": reference_column})))
        elif getattr(c.spec, "tests", None) in columns:
            out.append(c)
    return out


def math_verifier(output_column: str, reference_column: str):
    """`eval.verify: math`: verify_math on the answers against the reference, without a curation filter."""
    from datagen.spec.curation_models import VerifyMathFilter
    from sft.evaluate import Verifier

    spec = VerifyMathFilter(type="verify_math", column=output_column, reference=reference_column)
    return Verifier(f"verify_math({output_column})", spec)


def evaluate_source(model, tok, records: list[dict], checks: list, source: str, **kwargs) -> dict:
    """evaluate() on the source's records, its metrics renamed reference_* (loss, tokens, accuracy)."""
    from sft.evaluate import evaluate

    metrics = evaluate(model, tok, records, checks, **kwargs)
    out = {PREFIX + ("tokens" if k == "eval_tokens" else k): v for k, v in metrics.items()}
    return out | {"reference_source": source, "reference_rows": len(records)}
