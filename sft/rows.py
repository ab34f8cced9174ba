"""The rows a student trains on, read from the store and built exactly as export builds them.

A training row is the request as it was sent (system prompt, demos as turns, the rendered prompt) as `prompt`,
and the step's output column as the `completion` (TRL's conversational prompt/completion format, so the loss falls
on the assistant's tokens only), with a reasoning trace written as `export.reasoning` says, as export writes it.
Rows with an empty output are left out. The held-out part (`eval.split`) is taken in whole inputs, so no prompt is in
both parts; the choice follows the spec's seed.

A source with a `completion` column trains too (gold answers: a human-written dataset, the ceiling a teacher's answers
are measured against): its `prompt` column is the user turn (or `train.prompt`, a template over the row's columns,
renders it), `train.system` the system prompt, and `completion` the assistant turn. Either column may also hold chat
messages (a list of {role, content}), as Hugging Face prompt/completion datasets do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datagen.errors import UserError
from datagen.spec.load import LoadedSpec
from datagen.store.connection import open_store


@dataclass
class TrainRows:
    input: str  # the view read: a step or `curated`
    output_column: str  # the column whose text is the completion
    step: str | None  # the generation step that wrote it (None: a source's rows, gold answers)
    train: list[dict]  # {prompt, completion, row} with row = the stored row's columns
    eval: list[dict] = field(default_factory=list)
    skipped: int = 0  # rows left out because their output was empty
    reasoning: str | None = None  # how a trace is in the completion (inline | field | drop); None: no trace


def load_rows(loaded: LoadedSpec, plan, input_name: str | None, eval_split: float | None,
              prompt: str | None = None, system: str | None = None) -> TrainRows:
    """The selected rows as prompt/completion records, split into train and held-out parts. `prompt` and `system`
    (templates) put a source's rows; a step's rows are put as their requests were sent."""
    from datagen.publish.export import MESSAGES_COLUMN, fetch_input, resolve_input, split_records, to_records

    inp = resolve_input(plan, input_name)
    if inp.step is None:
        return source_rows(loaded, plan, inp.name, eval_split, prompt, system)
    con = open_store(loaded.store_path, read_only=True)
    try:
        table = fetch_input(con, inp)
    finally:
        con.close()
    form = loaded.spec.export.reasoning if loaded.spec.export else "inline"
    records, kept, skipped = to_records(table, inp, "prompt_completion", [], form)
    for rec, row in zip(records, kept):
        row.pop(MESSAGES_COLUMN, None)
        rec["row"] = row
    parts = split_records(records, kept, eval_split, loaded.spec.seed)
    train, held = parts["train"], parts.get("test", [])
    return TrainRows(inp.name, inp.output, inp.step.name, train, held, skipped, form if inp.markers else None)


def source_rows(loaded: LoadedSpec, plan, name: str, eval_split: float | None, prompt: str | None,
                system: str | None) -> TrainRows:
    """A source's rows with a `completion` column as prompt/completion records (the module doc)."""
    from datagen.publish.export import fetch_input, resolve_input, split_records

    rows = plan.source_rows.get(name)
    if rows is None:  # a `query` source (or `curated` over a source): its view in the store
        con = open_store(loaded.store_path, read_only=True)
        try:
            rows = fetch_input(con, resolve_input(plan, name)).to_pylist()
        finally:
            con.close()
    records, kept, skipped = [], [], 0
    for row in rows:
        rec = source_record(row, prompt, system)
        if rec is None:
            skipped += 1
            continue
        records.append({**rec, "row": dict(row)})
        kept.append(row)
    if not records:
        raise UserError(f"every row of `{name}` has an empty `completion`: nothing to train on")
    parts = split_records(records, kept, eval_split, loaded.spec.seed)
    return TrainRows(name, "completion", None, parts["train"], parts.get("test", []), skipped)


def source_record(row: dict, prompt: str | None, system: str | None) -> dict | None:
    """{prompt, completion} for a source row (None when its completion is empty)."""
    from datagen import templates

    completion = row.get("completion")
    if isinstance(completion, list):
        completion = [{"role": m.get("role", "assistant"), "content": str(m["content"])} for m in completion]
        if not completion or not any(m["content"].strip() for m in completion):
            return None
    elif completion is None or not str(completion).strip():
        return None
    else:
        completion = [{"role": "assistant", "content": str(completion)}]
    context = {k: v for k, v in row.items() if not k.startswith("_")}
    turns = [{"role": "system", "content": templates.render(system, context)}] if system else []
    if prompt is not None:
        turns.append({"role": "user", "content": templates.render(prompt, context)})
    elif isinstance(row.get("prompt"), list):
        turns = [m for m in turns if not any(t.get("role") == "system" for t in row["prompt"])]
        turns += [{"role": m["role"], "content": str(m["content"])} for m in row["prompt"]]
    else:
        turns.append({"role": "user", "content": str(row.get("prompt") or "")})
    return {"prompt": turns, "completion": completion}


def load_logprobs(loaded: LoadedSpec, row_ids: list[str]) -> dict:
    """row_id -> its soft labels (datagen.store.soft_labels.SoftLabels: arrays of the teacher's positions)."""
    from datagen.store import soft_labels

    con = open_store(loaded.store_path, read_only=True)
    try:
        return soft_labels.read(con, list(row_ids))
    finally:
        con.close()
