"""The rows a student trains on, read from the store and built exactly as export builds them.

A training row is the request as it was sent (system prompt, demos as turns, the rendered prompt) as `prompt`,
and the step's output column as the `completion` (TRL's conversational prompt/completion format, so the loss falls
on the assistant's tokens only), with a reasoning trace written as `export.reasoning` says, as export writes it.
Rows with an empty output are left out. The held-out part (`eval.split`) is taken in whole inputs, so no prompt is in
both parts; the choice follows the spec's seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datagen.spec.load import LoadedSpec
from datagen.store.connection import open_store


@dataclass
class TrainRows:
    input: str  # the view read: a step or `curated`
    output_column: str  # the column whose text is the completion
    step: str  # the generation step that wrote it
    train: list[dict]  # {prompt, completion, row} with row = the stored row's columns
    eval: list[dict] = field(default_factory=list)
    skipped: int = 0  # rows left out because their output was empty
    reasoning: str | None = None  # how a trace is in the completion (inline | field | drop); None: no trace


def load_rows(loaded: LoadedSpec, plan, input_name: str | None, eval_split: float | None) -> TrainRows:
    """The selected rows as prompt/completion records, split into train and held-out parts."""
    from datagen.publish.export import MESSAGES_COLUMN, fetch_input, resolve_input, split_records, to_records

    inp = resolve_input(plan, input_name)
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


def load_logprobs(loaded: LoadedSpec, row_ids: list[str]) -> dict:
    """row_id -> its soft labels (datagen.store.soft_labels.SoftLabels: arrays of the teacher's positions)."""
    from datagen.store import soft_labels

    con = open_store(loaded.store_path, read_only=True)
    try:
        return soft_labels.read(con, list(row_ids))
    finally:
        con.close()
