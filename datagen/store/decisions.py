"""Decisions and preference pairs: one writer, one replace rule.

Every keep-or-drop verdict is a `decisions` row (row_id, stage, kept, reason, score, duplicate_of). Its `owner` is
what wrote it: `curation` for the curation block, `step:<name>` for a generation step (expansion's novelty, a vote,
a self step's kept samples, a judge's pairs). Verdicts are always recomputed from stored rows, so a write replaces
everything its owner wrote before, in one transaction: a stage that is gone from the spec leaves no stale rows, and
a replayed step writes the same verdicts again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, UTC

import duckdb

from datagen.store.writes import insert_rows, transaction
from datagen.verdict import Verdict

CURATION = "curation"


def step_owner(step: str) -> str:
    return f"step:{step}"


def _decision_table(decisions: list[tuple[str, str, Verdict]], owner: str):
    """Arrow rows; stage k (in order of first appearance) is stamped start + k microseconds, so ordering the funnel by
    min(created_at) gives the order the stages ran even though one transaction has one current_timestamp."""
    import pyarrow as pa

    start = datetime.now(UTC).replace(tzinfo=None)
    order: dict[str, int] = {}
    for stage, _, _ in decisions:
        order.setdefault(stage, len(order))
    return pa.table({
        "row_id": pa.array([rid for _, rid, _ in decisions], pa.string()),
        "stage": pa.array([stage for stage, _, _ in decisions], pa.string()),
        "kept": pa.array([v.kept for _, _, v in decisions], pa.bool_()),
        "reason": pa.array([v.reason for _, _, v in decisions], pa.string()),
        "score": pa.array([None if v.score is None else float(v.score) for _, _, v in decisions], pa.float64()),
        "duplicate_of": pa.array([v.duplicate_of for _, _, v in decisions], pa.string()),
        "created_at": pa.array([start + timedelta(microseconds=order[s]) for s, _, _ in decisions], pa.timestamp("us")),
        "owner": pa.array([owner] * len(decisions), pa.string()),
    })


def _replace(con: duckdb.DuckDBPyConnection, owner: str, decisions: list[tuple[str, str, Verdict]]) -> None:
    con.execute("DELETE FROM decisions WHERE owner = ?", [owner])
    if decisions:
        insert_rows(con, "decisions", _decision_table(decisions, owner))


def replace_decisions(con: duckdb.DuckDBPyConnection, owner: str, decisions: list[tuple[str, str, Verdict]]) -> None:
    """Replace everything `owner` decided with `decisions`: (stage, row_id, verdict) in the order the stages ran."""
    with transaction(con):
        _replace(con, owner, decisions)


def replace_pairs(con: duckdb.DuckDBPyConnection, step: str, stage: str, pairs: list[dict],
                  decisions: list[tuple[str, Verdict]]) -> None:
    """A judge step's pairs, their lineage (chosen, rejected) and the verdicts on every candidate, replaced whole."""
    import pyarrow as pa

    lineage = [{"child_id": p["_id"], "parent_id": p[f"{role}_id"], "role": role}
               for p in pairs for role in ("chosen", "rejected")]
    rows = [{**p, "prompt": p["prompt"] if isinstance(p["prompt"], str)
             else json.dumps(p["prompt"], ensure_ascii=False)} for p in pairs]
    with transaction(con):
        con.execute("DELETE FROM lineage WHERE child_id IN (SELECT _id FROM pairs WHERE step = ?)", [step])
        con.execute("DELETE FROM pairs WHERE step = ?", [step])
        _replace(con, step_owner(step), [(stage, rid, v) for rid, v in decisions])
        if rows:
            insert_rows(con, "pairs", pa.Table.from_pylist(rows))
        if lineage:
            insert_rows(con, "lineage", pa.Table.from_pylist(lineage))


def replace_curated(con: duckdb.DuckDBPyConnection, decisions: list[tuple[str, str, Verdict]],
                    selected: list[str]) -> None:
    """A curation run's verdicts and its selection (what the `curated` view shows, views.CuratedView),
    atomically."""
    import pyarrow as pa

    ranks = pa.table({"row_id": pa.array(selected, pa.string()), "rank": pa.array(range(len(selected)), pa.int32())})
    with transaction(con):
        _replace(con, CURATION, decisions)
        con.execute("DELETE FROM _curated")
        insert_rows(con, "_curated", ranks)


def derived_counts(con: duckdb.DuckDBPyConnection, step: str) -> list[tuple[str, int, int]]:
    """(stage, kept, dropped) of what a step decided about its own rows."""
    return con.execute("SELECT stage, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept) FROM decisions "
                       "WHERE owner = ? GROUP BY stage ORDER BY stage", [step_owner(step)]).fetchall()


def drop_reasons(con: duckdb.DuckDBPyConnection, stage: str, row_ids_of_step: str | None = None
                 ) -> list[tuple[str, int]]:
    """The reasons rows were dropped at `stage`, commonest first (numbers in `x >= y` reasons folded together);
    with `row_ids_of_step`, only about that step's current rows."""
    where, params = "stage = ? AND NOT kept", [stage]
    if row_ids_of_step is not None:
        where += (" AND row_id IN (SELECT _id FROM outputs o WHERE o.step = ? AND o.key IN "
                  "(SELECT key FROM _plan WHERE step = ?))")
        params += [row_ids_of_step, row_ids_of_step]
    return con.execute(f"SELECT regexp_replace(reason, ' [0-9.]+ >=', ' >='), count(*) AS n FROM decisions "
                       f"WHERE {where} GROUP BY 1 ORDER BY n DESC", params).fetchall()


