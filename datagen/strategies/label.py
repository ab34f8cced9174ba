"""Labeling: the teacher writes the output for inputs you already have (y ~ pT(y | I + demos + x)).

Two functions from rows to rows: `build_requests` turns input rows into chat requests (one per wanted sample), and
`parse_reply` turns a teacher reply into the produced columns or a reason it failed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from datagen import templates
from datagen.keys import request_key
from datagen.spec.models import DemosSpec, LabelStep


@dataclass
class PlannedRequest:
    key: str
    step: str
    parent_id: str | None
    sample_index: int
    messages: list[dict[str, str]]
    teacher: str
    lineage: list[tuple[str, str]] = field(default_factory=list)  # (parent_id, role) besides the input
    fields: dict[str, Any] = field(default_factory=dict)  # produced columns known before the reply (curate's meta)


def draw_demos(demos: DemosSpec, pool: list[dict], row_id: str | None, seed: int, step: str) -> list[dict]:
    """k demo rows for one input, drawn with the run's seed; never the input itself."""
    candidates = [d for d in pool if d["_id"] != row_id]
    rng = random.Random(f"{seed}\0{step}\0{row_id}")
    # kept in pool order, not draw order: inputs that draw the same demos then share a prompt prefix (prefix cache)
    chosen = sorted(rng.sample(range(len(candidates)), min(demos.k, len(candidates))))
    return [candidates[i] for i in chosen]


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def render_messages(step: LabelStep, row: dict, demo_rows: list[dict]) -> list[dict[str, str]]:
    context = public(row)
    messages: list[dict[str, str]] = []
    demos = getattr(step, "demos", None)  # a curate step has none
    as_turns = demos is not None and demos.as_ == "turns"
    if not as_turns and demos is not None:
        context["demos"] = [public(d) for d in demo_rows]
    if step.system:
        messages.append({"role": "system", "content": templates.render(step.system, context)})
    if as_turns:
        for d in demo_rows:
            user = str(d[step.demos.user]) if step.demos.user else templates.render(step.prompt, public(d))
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": str(d[step.demos.assistant])})
    messages.append({"role": "user", "content": templates.render(step.prompt, context)})
    return messages


def build_requests(step: LabelStep, rows: list[dict], demo_pool: list[dict] | None, seed: int,
                   teacher_name: str, teacher_identity: dict, sampling: dict,
                   key_extra: dict | None = None) -> list[PlannedRequest]:
    fmt = getattr(step, "response_format", None)
    schema = fmt.json_schema if fmt else None
    out = []
    for row in rows:
        demo_rows = draw_demos(step.demos, demo_pool or [], row["_id"], seed, step.name) if step.demos else []
        messages = render_messages(step, row, demo_rows)
        for index in range(step.n):
            key = request_key(step=step.name, parent_id=row["_id"], messages=messages, teacher=teacher_identity,
                              sampling=sampling, json_schema=schema, logprobs=step.logprobs, sample_index=index,
                              extra=key_extra)
            out.append(PlannedRequest(key, step.name, row["_id"], index, messages, teacher_name,
                                      [(d["_id"], "demo") for d in demo_rows]))
    return out


def parse_reply(step: LabelStep, text: str) -> tuple[dict[str, Any] | None, str | None]:
    """Produced fields (besides the output text) or the reason the reply is unusable."""
    fmt = getattr(step, "response_format", None)  # expand and curate steps have no structured output
    if fmt is None:
        return {}, None
    schema = fmt.json_schema
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"reply is not valid JSON ({exc.msg} at char {exc.pos}): {text[:120]!r}"
    if not isinstance(value, dict):
        return None, f"reply JSON is a {type(value).__name__}, the schema wants an object"
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return None, f"reply does not match the schema: {exc.message}"
    return {k: value.get(k) for k in schema["properties"]}, None
