"""What the review page shows, as plain JSON-ready values: the relations to browse, a filtered page of rows with
each row's fate, one row's whole story, the funnel and the judge's agreement with people.

Every value from the store leaves here as text, a number, a boolean or None (lists and objects as JSON text), and
the page puts it into the document as text only (datagen/review/static/review.js), never as markup.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime

from datagen.errors import UserError
from datagen.reasoning import trace_column
from datagen.spec.plan import Plan, PlannedStep
from datagen.store import human, review, stats
from datagen.store.reads import count, relation_exists

PREVIEW_CHARS = 240
MAX_TOKENS = 4000  # soft labels shown for one reply, at most


def plain(value):
    """A store value as JSON-safe text or number (NaN and infinities are None)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return json.dumps(value, ensure_ascii=False, default=str)


def _step(plan: Plan, name: str) -> PlannedStep | None:
    return next((s for s in plan.steps if s.name == name), None)


def base_of(plan: Plan, rel: str) -> str:
    """The step or source whose rows `rel` shows (`curated` shows its curation input's)."""
    if rel == "curated" and plan.spec.curation is not None:
        return plan.spec.curation.input
    return rel


def relations(plan: Plan, con) -> list[dict]:
    """Every step, source and the curated set, with how many rows each holds now (None: not in the store yet)."""
    out = [{"name": st.name, "kind": "step", "strategy": st.spec.strategy, "rows": count(con, st.name)}
           for st in plan.steps]
    out += [{"name": name, "kind": "source", "strategy": None, "rows": count(con, name)}
            for name in plan.source_columns]
    if plan.spec.curation is not None:
        out.append({"name": "curated", "kind": "curated", "strategy": None, "rows": count(con, "curated")})
    return out


def check_relation(plan: Plan, con, rel: str) -> None:
    known = [r["name"] for r in relations(plan, con)]
    if rel not in known:
        raise UserError(f"`{rel}` is not a step, a source or `curated` of this spec; known: {', '.join(known)}")
    if not relation_exists(con, rel):
        hint = "run `datagen curate`" if rel == "curated" else "run `datagen run`"
        raise UserError(f"the store has no `{rel}` rows yet; {hint} first")


def _preview_columns(plan: Plan, base: str, columns: list[str]) -> list[str]:
    st = _step(plan, base)
    public = [c for c in columns if not c.startswith("_")]
    first = [st.spec.output] if st is not None and st.spec.output in public else []
    return first + [c for c in public if c not in first][: 3 - len(first)]


def _clip(value) -> str | None:
    text = plain(value)
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def row_page(plan: Plan, con, rel: str, f: review.RowFilter, offset: int, limit: int) -> dict:
    check_relation(plan, con, rel)
    base = base_of(plan, rel)
    st = _step(plan, base)
    score_column = st.spec.output if st is not None and st.score_scale is not None else None
    total, rows = review.page(con, rel, f, offset, limit, creation_order=st is not None and rel != "curated",
                              score_column=score_column)
    edits = human.newest_revisions(con, [r["_id"] for r in rows])
    columns = [c for c in (rows[0] if rows else {}) if not c.startswith("__")]
    preview = _preview_columns(plan, base, columns)
    out = []
    for r in rows:
        shown = {**r, st.spec.output: edits[r["_id"]]} if st is not None and r["_id"] in edits else r
        out.append({"id": r["_id"], "preview": [[c, _clip(shown.get(c))] for c in preview],
                    "kept": r["__kept"], "why": r["__why"], "score": plain(r["__score"]),
                    "human": None if r["__human_kept"] is None else
                    {"kept": r["__human_kept"], "reason": r["__human_reason"], "reviewer": r["__reviewer"]},
                    "edited": r["_id"] in edits})
    return {"relation": rel, "total": total, "offset": offset, "limit": limit, "rows": out,
            "stages": review.stages_of(con, rel), "score": score_column or "decision score"}


def editable(plan: Plan, con, row_id: str) -> tuple[PlannedStep, str]:
    """The step and column an edit of this row changes, or a UserError saying why it cannot be edited."""
    stored = review.output_of(con, row_id)
    if stored is None:
        raise UserError(f"row {row_id} is not a generated row (a source's rows have no reply to edit)")
    st = _step(plan, stored["step"])
    if st is None:
        raise UserError(f"row {row_id} belongs to `{stored['step']}`, which is not a step of this spec")
    column = st.spec.output
    if st.output_is_conversation:
        raise UserError(f"`{st.name}` holds whole conversations in `{column}`; only a text reply can be edited")
    if not st.output_is_text or st.produced.get(column) != "VARCHAR":
        raise UserError(f"`{st.name}`'s `{column}` is not a text reply (a judge's score); rate the row instead")
    return st, column


def story(plan: Plan, con, row_id: str) -> dict:
    """One row's whole story: its columns, input row, request, reply, trace, conversation or tool trajectory, soft
    labels, every decision (with its reason), ratings, edits and lineage."""
    stored = review.output_of(con, row_id)
    rel = stored["step"] if stored else human.row_exists(con, row_id, list(plan.source_columns))
    if rel is None:
        raise UserError(f"no row with id {row_id} in this store")
    st = _step(plan, rel)
    row = review.one_row(con, rel, row_id) if relation_exists(con, rel) else None
    out = {"id": row_id, "relation": rel, "kind": "step" if stored else "source",
           "in_view": row is not None, "columns": [[k, plain(v)] for k, v in (row or {}).items()
                                                     if k != "_messages"],
           "decisions": [{k: plain(v) for k, v in d.items()} for d in review.decisions_of(con, row_id)],
           "ratings": [{k: plain(v) for k, v in d.items()} for d in review.ratings_of(con, row_id)],
           "revisions": [{k: plain(v) for k, v in d.items()} for d in review.revisions_of(con, row_id)],
           "lineage": {k: [{a: plain(b) for a, b in d.items()} for d in v]
                       for k, v in review.lineage_of(con, row_id).items()}}
    if stored:
        out.update(_generated(plan, con, st, row or {}, stored, row_id))
    return out


def _generated(plan: Plan, con, st: PlannedStep | None, row: dict, stored: dict, row_id: str) -> dict:
    output = st.spec.output if st is not None else None
    reply = row.get(output, stored["text"]) if output else stored["text"]
    out = {"messages": json.loads(stored["messages"]) if stored["messages"] else None,
           "output_column": output, "reply": plain(reply), "raw_reply": stored["text"],
           "finish_reason": stored["finish_reason"], "teacher": stored["teacher"],
           "tokens": {"prompt": stored["prompt_tokens"], "completion": stored["completion_tokens"]},
           "trace": plain(row.get(trace_column(output))) if output else None,
           "conversation": None, "tool_calls": [], "soft_labels": _soft_labels(con, row_id), "input": None}
    if st is not None and st.output_is_conversation and reply:
        turns = json.loads(reply) if isinstance(reply, str) else reply
        out["conversation"] = [{k: plain(v) for k, v in t.items()} for t in turns if isinstance(t, dict)]
        out["tool_calls"] = [{k: plain(v) for k, v in c.items()} for c in review.tool_calls_of(con, row_id)]
    if st is not None and st.input and stored["parent_id"] and relation_exists(con, st.input):
        parent = review.one_row(con, st.input, stored["parent_id"])
        if parent is not None:
            out["input"] = {"relation": st.input, "id": stored["parent_id"],
                            "columns": [[k, plain(v)] for k, v in parent.items() if k != "_messages"]}
    try:
        editable(plan, con, row_id)
        out["editable"], out["not_editable"] = True, None
    except UserError as exc:
        out["editable"], out["not_editable"] = False, str(exc)
    edits = review.revisions_of(con, row_id)
    out["current_reply"] = edits[-1]["text"] if edits else plain(reply)  # what curation and export read
    return out


def _soft_labels(con, row_id: str) -> list[dict]:
    """Per token: the token, its probability, and the top alternatives with theirs."""
    out = []
    for t in review.tokens_of(con, row_id, MAX_TOKENS):
        p = math.exp(t["logprob"]) if t["logprob"] is not None else None
        top = [[tok, math.exp(lp)] for tok, lp in zip(t["top"] or [], t["top_logprobs"] or [])
               if lp is not None and math.isfinite(lp)]
        out.append({"token": t["token"], "p": p, "top": top})
    return out


def funnel(plan: Plan, con) -> dict:
    """The rows of each step and the curation funnel (stages, kept, dropped, commonest reasons), and what people
    decided that the funnel does not show yet."""
    counts = stats.step_counts(con, [(st.name, st.spec.strategy, st.input) for st in plan.steps])
    stages = stats.funnel(con, plan.stage_order)
    selected = stats.curated_ids(con)
    return {"steps": counts,
            "stages": [{"stage": s.name, "rows_in": s.rows_in, "kept": s.kept, "dropped": s.dropped,
                        "reasons": [[r, n] for r, n in s.reasons]} for s in stages],
            "selected": None if selected is None else len(selected),
            "review": human.review_counts(con),
            "curation": plan.spec.curation is not None}
