"""Export: the rows of a step (or the curated set) as Parquet shards plus a dataset card, in a shape TRL reads as is.

A training row is built the way its request was: the rendered request messages stored in `requests.messages`
(system prompt, demo turns, user prompt) followed by the output column as the assistant turn. Formats:

- `messages`: one `messages` column, the whole conversation (TRL's conversational language-modelling format);
- `prompt_completion`: `prompt` (the messages before the answer) and `completion` (the assistant message), so TRL
  puts the loss on the completion only;
- `preference`: `prompt`, `chosen`, `rejected`, from the pairs a judge step builds;
- `sharegpt`: `conversations` of {from, value}, `system` and `tools`, as LLaMA-Factory reads ShareGPT;
- `columns`: rows whose input is a source have no request, so their columns are exported as they are.

A step with `reasoning: true` has its answer in the output column and its trace beside it; `export.reasoning`
says how the assistant turn carries the trace (datagen/reasoning.py): `inline` (`<think>\n{trace}\n</think>\n\n
{answer}`, the default), `field` (a `reasoning_content` key on the assistant message) or `drop`. `datagen train`
trains on the same rows.

Conversation and agent steps export every turn; an agent's rows carry assistant `tool_calls`, `tool` turns and a
`tools` column (the tools' JSON schemas, as text), which TRL's SFTTrainer passes to the chat template.

The folder loads with `datasets.load_dataset(path)`: the card's `configs` names the split files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datagen import reasoning
from datagen.errors import UserError
from datagen.spec.load import LoadedSpec
from datagen.spec.plan import Plan, PlannedStep
from datagen.store import human, reads
from datagen.store.connection import open_store
from datagen.store.reads import MESSAGES_COLUMN

FORMATS = ("messages", "prompt_completion", "preference", "sharegpt")
SHARD_RE = re.compile(r"^(train|test)-\d{5}-of-\d{5}\.parquet$")


@dataclass
class ExportInput:
    name: str  # the view read: a step, a source or `curated`
    step: PlannedStep | None  # the step whose output is the assistant turn; None when the rows are a source's
    columns: list[str]
    pairs: bool = False  # the rows are the preference pairs the step (a judge) built, from the `pairs` table

    @property
    def output(self) -> str | None:
        return self.step.spec.output if self.step else None

    @property
    def markers(self) -> reasoning.Markers | None:
        """The trace markers when the rows keep a trace (a step with `reasoning`), else None."""
        from datagen.spec.reasoning_models import markers_of

        spec = markers_of(self.step.spec) if self.step is not None and not self.pairs else None
        return reasoning.Markers(spec.start, spec.end) if spec else None


@dataclass
class ExportResult:
    path: Path
    input: ExportInput
    format: str  # messages | prompt_completion | preference | columns
    columns: list[str]  # the exported columns, in order
    splits: dict[str, int]  # split -> rows
    data_files: list[Path] = field(default_factory=list)
    card: Path | None = None
    skipped: int = 0  # rows left out because their output was empty
    reasoning: str | None = None  # how traces are written (inline | field | drop); None: the rows have none

    @property
    def files(self) -> list[Path]:
        return self.data_files + ([self.card] if self.card else [])


def default_input(plan: Plan) -> str:
    spec = plan.spec
    if spec.curation is not None:
        return "curated"
    if not spec.steps:
        raise UserError("a spec without steps or curation has no default rows: set `input:` to a source")
    return spec.steps[-1].name


PAIR_COLUMNS = ["prompt", "chosen", "rejected", "_id", "_parent_id", "method", "chosen_id", "rejected_id",
                "chosen_score", "rejected_score", "margin"]


def input_columns(plan: Plan, name: str | None, fmt: str | None = None) -> tuple[list[str], bool]:
    """The columns the rows of export input `name` have, and whether they come from a step (so have chat turns)."""
    inp = resolve_input(plan, name, fmt)
    return inp.columns, inp.step is not None


def resolve_input(plan: Plan, name: str | None, fmt: str | None = None) -> ExportInput:
    """What export input `name` reads; in the preference format a judge step that builds pairs means its pairs."""
    spec = plan.spec
    name = name or default_input(plan)
    base = name
    if name == "curated":
        if spec.curation is None:
            raise UserError("`curated` is the curation block's result, and this spec has no `curation:` block; "
                            "name a step instead")
        base = spec.curation.input
    steps = {s.name: s for s in plan.steps}
    if base in steps and fmt == "preference" and name == base and steps[base].makes_pairs:
        return ExportInput(name, steps[base], PAIR_COLUMNS, pairs=True)
    if base in steps:
        return ExportInput(name, steps[base], steps[base].columns)
    if base in plan.source_columns:
        return ExportInput(name, None, list(plan.source_columns[base]))
    known = ", ".join([s.name for s in plan.steps] + list(plan.source_columns) + ["curated"])
    raise UserError(f"`{name}` is not a step, a source or `curated`; known: {known}")


def export_dir(loaded: LoadedSpec, out: str | Path | None = None) -> Path:
    if out is not None:
        return Path(out).expanduser().resolve()
    template = loaded.spec.export.path if loaded.spec.export else "out/{name}"
    return loaded.resolve_path(template.replace("{name}", loaded.spec.name)).resolve()


def export(loaded: LoadedSpec, out: str | Path | None = None, fmt: str | None = None,
           test_split: float | None = None, repo_id: str | None = None, plan: Plan | None = None) -> ExportResult:
    """Write the export folder (Parquet shards under data/, README.md) and return what was written."""
    from datagen.publish import card
    from datagen.pipeline.planner import build_plan
    from datagen.spec.models import ExportSpec

    plan = plan or build_plan(loaded)
    settings = loaded.spec.export or ExportSpec()
    test_split = settings.test_split if test_split is None else test_split
    if test_split is not None and not (0 < test_split < 1):
        raise UserError(f"the test split must be a share in (0, 1), e.g. 0.1; got {test_split}")
    inp = resolve_input(plan, settings.input)
    fmt = choose_format(inp, fmt, settings)
    if fmt == "preference":
        inp = resolve_input(plan, settings.input, fmt)
        if not inp.pairs:
            raise UserError(f"{PREFERENCE_NEEDS}; `{inp.name}` has no pairs")
    path = export_dir(loaded, out)
    con = open_store(loaded.store_path, read_only=True)
    try:
        table = fetch_input(con, inp)
        records, kept_rows, skipped = to_records(table, inp, fmt, settings.columns, settings.reasoning)
        splits = split_records(records, kept_rows, test_split, loaded.spec.seed)
        form = settings.reasoning if inp.markers and fmt in ("messages", "prompt_completion") else None
        result = ExportResult(path, inp, fmt, list(records[0]) if records else [],
                              {s: len(r) for s, r in splits.items()}, skipped=skipped, reasoning=form)
        result.data_files = write_splits(path, splits, settings.shard_rows, fmt, form == "field")
        result.card = path / "README.md"
        text = card.build_card(plan, con, result, repo_id or (settings.hub.repo_id if settings.hub else None))
        _atomic_write(result.card, text.encode("utf-8"))
    finally:
        con.close()
    return result


def choose_format(inp: ExportInput, fmt: str | None, settings) -> str:
    """The command line's format, else the spec's; rows from a source have no chat turns, so they export as
    `columns` unless a chat format was asked for explicitly, which is an error."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    explicit = fmt is not None or "format" in settings.model_fields_set
    fmt = fmt or settings.format
    if inp.step is not None:
        return fmt
    if explicit:
        raise UserError(f"the `{fmt}` format needs a generation step's rows (chat turns), and `{inp.name}` "
                        "holds a source's rows; leave the format unset to export their columns as they are")
    return "columns"


def fetch_input(con, inp: ExportInput):
    """The input's rows as a pyarrow Table; step rows carry their request's messages in MESSAGES_COLUMN."""
    table = reads.export_rows(con, inp.name, "pairs" if inp.pairs else "source" if inp.step is None else "step")
    if not inp.pairs:  # `datagen review`: a row a person dropped never leaves; a person's newest edit is the reply
        table = human.reviewed(con, table, inp.output)
    if table.num_rows == 0:
        raise UserError(f"nothing to export: `{inp.name}` has no rows; run the spec (and its curation) first")
    return table


def to_records(table, inp: ExportInput, fmt: str, extra: list[str], form: str = "inline"
               ) -> tuple[list[dict], list[dict], int]:
    """Rows in the export format plus the extra columns (a trace written as `form` says); also the source rows kept
    (for splitting) and how many rows were left out because their output is empty."""
    missing = [c for c in extra if c not in table.column_names]
    if missing:
        raise UserError(f"export.columns: {', '.join(missing)} not in `{inp.name}`; columns: "
                        f"{', '.join(c for c in table.column_names if c != MESSAGES_COLUMN)}")
    rows = table.to_pylist()
    records, kept, skipped = [], [], 0
    for row in rows:
        rec = _record(row, inp, fmt, form)
        if rec is None:
            skipped += 1
            continue
        for col in extra:
            rec[col] = row[col]
        records.append(rec)
        kept.append(row)
    if not records:
        raise UserError(f"every row of `{inp.name}` has an empty output: nothing to export or train on")
    return records, kept, skipped


def _record(row: dict, inp: ExportInput, fmt: str, form: str) -> dict | None:
    if fmt == "columns":
        return {k: v for k, v in row.items() if not k.startswith("_")}
    if fmt == "preference":
        return preference_record(row)
    answer = row.get(inp.output)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return None
    prompt = [{"role": m["role"], "content": str(m["content"])} for m in json.loads(row[MESSAGES_COLUMN])]
    if inp.step is not None and inp.step.output_is_conversation:  # the system prompt, then every turn
        turns = json.loads(answer) if isinstance(answer, str) else answer
        messages = [m for m in prompt if m["role"] == "system"] + [chat_message(m) for m in turns]
        tools = row.get(f"{inp.output}_tools")  # an agent step's: the tools the model was offered
        tools = json.dumps(tools) if tools is not None and not isinstance(tools, str) else tools
        if fmt == "sharegpt":
            return sharegpt_record(messages, tools)
        rec = {"messages": messages} if fmt == "messages" else {"prompt": messages[:-1], "completion": messages[-1:]}
        return {**rec, "tools": tools} if tools is not None else rec
    # structured output: the output column already holds the reply's JSON text
    answer = answer if isinstance(answer, str) else json.dumps(answer)
    markers = inp.markers
    trace = row.get(reasoning.trace_column(inp.output)) if markers else None
    completion = [reasoning.assistant_message(answer, trace, form, markers or reasoning.Markers())]
    if fmt == "messages":
        return {"messages": prompt + completion}
    if fmt == "sharegpt":
        return sharegpt_record(prompt + completion, None)
    return {"prompt": prompt, "completion": completion}


TOOL_KEYS = ("tool_calls", "tool_call_id", "name")  # what a trajectory's turns carry besides role and content


def chat_message(m: dict) -> dict:
    """A stored turn as an exported one: role and content, and an agent's tool calls and results as OpenAI and
    TRL read them (assistant `tool_calls` with JSON-text arguments; `tool` turns with `tool_call_id` and `name`)."""
    out = {"role": m["role"], "content": str(m.get("content") or "")}
    out.update({k: m[k] for k in TOOL_KEYS if m.get(k) is not None})
    return out


SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}


def sharegpt_record(messages: list[dict], tools: str | None) -> dict:
    """ShareGPT as LLaMA-Factory reads it: `conversations` of {from, value} (human, gpt, function_call,
    observation), the system prompt in `system`, the tools as JSON text in `tools`. An assistant turn that calls
    tools is one `function_call` turn (its calls as JSON; the format has no place for the words before them), and
    the results that follow it one `observation` (a JSON list when there are several)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[dict] = []
    for m in messages:
        if m["role"] == "system":
            continue
        if m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": _json_or_text(c["function"]["arguments"])}
                     for c in m["tool_calls"]]
            turns.append({"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls)})
        elif m["role"] == "tool" and turns and turns[-1]["from"] == "observation":
            before = turns[-1].get("_results", [turns[-1]["value"]])
            turns[-1] = {"from": "observation", "value": json.dumps(before + [m["content"]]),
                         "_results": before + [m["content"]]}
        else:
            turns.append({"from": SHAREGPT_FROM[m["role"]], "value": m["content"]})
    return {"conversations": [{"from": t["from"], "value": t["value"]} for t in turns], "system": system,
            "tools": tools or ""}


def _json_or_text(text):
    try:
        return json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return text


PREFERENCE_NEEDS = ("the preference format exports the pairs a judge step builds: set `input` to a judge step with "
                    "`pairs:` (or `revise: true`)")


def preference_record(row: dict) -> dict | None:
    """prompt/chosen/rejected in TRL's conversational preference format, from a row with `chosen` and `rejected`
    (texts or message lists) and the pair's prompt (a `prompt` column, else the row's request messages)."""
    if "chosen" not in row or "rejected" not in row:
        raise UserError(PREFERENCE_NEEDS)
    if row["chosen"] is None or row["rejected"] is None:
        return None
    prompt = row.get("prompt")
    if prompt is None:
        prompt = json.loads(row[MESSAGES_COLUMN])
    return {"prompt": _turns(prompt, "user"), "chosen": _turns(row["chosen"], "assistant"),
            "rejected": _turns(row["rejected"], "assistant")}


def _turns(value: Any, role: str) -> list[dict]:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(m, dict) and "role" in m for m in parsed):
            value = parsed
    if isinstance(value, list):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    return [{"role": role, "content": str(value)}]


def split_records(records: list[dict], rows: list[dict], test_split: float | None, seed: int) -> dict[str, list]:
    """train (and test): whole groups of rows that share an input go to one split, so no prompt is in both."""
    if not test_split:
        return {"train": records}
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row.get("_parent_id") or row.get("_id") or i), []).append(i)
    if len(groups) < 2:
        raise UserError(f"a test split needs rows from at least 2 inputs; these {len(records)} rows have "
                        f"{len(groups)}")
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).hexdigest())
    want = max(1, round(test_split * len(records)))
    test: set[int] = set()
    for g in order[:-1]:  # the last group always stays in train
        if len(test) >= want:
            break
        test.update(groups[g])
    return {"train": [r for i, r in enumerate(records) if i not in test],
            "test": [r for i, r in enumerate(records) if i in test]}


def arrow_schema_for(fmt: str, sample: dict, trace_field: bool = False, tool_turns: bool = False):
    import pyarrow as pa

    if fmt == "sharegpt":
        return {"conversations": pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))}
    fields = [("role", pa.string()), ("content", pa.string())]
    if tool_turns:  # every turn gets the keys (null where unused), one schema for every row
        function = pa.struct([("name", pa.string()), ("arguments", pa.string())])
        call = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", function)])
        fields += [("tool_calls", pa.list_(call)), ("tool_call_id", pa.string()), ("name", pa.string())]
    # every turn gets the key (null where there is no trace), as chat templates read it from assistant turns
    turn = pa.struct(fields + [("reasoning_content", pa.string())] if trace_field else fields)
    fixed = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"],
             "preference": ["prompt", "chosen", "rejected"]}.get(fmt, [])
    return {name: pa.list_(turn) for name in fixed if name in sample}


def has_tool_turns(records: list[dict]) -> bool:
    return any(set(m) & set(TOOL_KEYS) for r in records for name in ("messages", "prompt", "completion")
               for m in r.get(name) or [] if isinstance(m, dict))


def write_splits(path: Path, splits: dict[str, list], shard_rows: int, fmt: str, trace_field: bool = False
                 ) -> list[Path]:
    """data/<split>-0000i-of-0000n.parquet; shards a previous export left that this one did not write are removed,
    so the folder never mixes two exports."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = path / "data"
    data.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split, records in splits.items():
        fixed = arrow_schema_for(fmt, records[0], trace_field, has_tool_turns(records))
        columns = {}
        for name in records[0]:
            values = [r[name] for r in records]
            columns[name] = pa.array(values, type=fixed.get(name))
        table = _nulls_to_text(pa.table(columns))
        n = max(1, math.ceil(table.num_rows / shard_rows))
        for i in range(n):
            target = data / f"{split}-{i:05d}-of-{n:05d}.parquet"
            tmp = target.with_name(f".{target.name}.tmp")
            pq.write_table(table.slice(i * shard_rows, shard_rows), tmp)
            os.replace(tmp, target)
            written.append(target)
    for stale in data.iterdir():
        if SHARD_RE.match(stale.name) and stale not in written:
            stale.unlink()
    return written


def _nulls_to_text(table):
    """A column that is null in every row has Arrow type null, which `datasets` cannot cast; make it text."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            table = table.set_column(i, pa.field(f.name, pa.string()), table.column(i).cast(pa.string()))
    return table


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def exported_text(result: ExportResult) -> str:
    splits = ", ".join(f"{name} {n} rows" for name, n in result.splits.items())
    lines = [f"exported `{result.input.name}` as {result.format} to {result.path}: {splits}"]
    if result.skipped:
        lines.append(f"  left out {result.skipped} rows with an empty output")
    lines += [f"  {p.relative_to(result.path)}" for p in result.files]
    return "\n".join(lines)


def describe_export(loaded: LoadedSpec, plan: Plan) -> list[str]:
    """The export block, for the plan `datagen validate` prints."""
    settings = loaded.spec.export
    if settings is None:
        return []
    inp = resolve_input(plan, settings.input)
    hub = f", then `datagen push` to {settings.hub.repo_id}" if settings.hub else ""
    fmt = settings.format if inp.step is not None else "columns"
    return [f"  export: {inp.name} as {fmt} -> {export_dir(loaded)}{hub}"]


def check_export(loaded: LoadedSpec, plan: Plan) -> None:
    """The `export:` block names rows that exist (a step, a source or `curated`) and columns those rows have."""
    export = loaded.spec.export
    if export is None:
        return
    try:
        columns, from_step = input_columns(plan, export.input, export.format)
    except UserError as exc:
        raise loaded.error(("export", "input"), str(exc)) from None
    for i, col in enumerate(export.columns):
        if col not in columns:
            raise loaded.error(("export", "columns", i), f"`{col}` is not a column of the exported rows; columns: "
                                                         f"{', '.join(columns)}")
    if export.format == "preference" and not {"chosen", "rejected"} <= set(columns):
        raise loaded.error(("export", "format"), f"{PREFERENCE_NEEDS}; `{export.input or 'the last step'}` has no "
                                                 "pairs")
    if not from_step and "format" in export.model_fields_set:
        raise loaded.error(("export", "format"), f"the `{export.format}` format needs a generation step's rows "
                                                 "(chat turns); these rows come from a source: remove `format` to "
                                                 "export its columns as they are")
