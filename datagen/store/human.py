"""What people decide in `datagen review`: keep or drop (a `decisions` row, stage and owner `human`, with the
reviewer's name), ratings (pass/fail or 1-5, `human_ratings`) and edits of a reply (`human_revisions`, each with
lineage to what it replaces). Nothing is overwritten: every decision, rating and edit stays, and the latest one of a
row counts.

Curation, export and training read them through `latest_decisions`, `newest_revisions` and `reviewed`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, UTC

import duckdb

from datagen.store.sql import quote_ident as q, transaction

HUMAN = "human"  # the stage and the owner of a person's decisions
REVIEW_STAGE = "review:human"  # the curation stage that applies them (first in the funnel)
EDIT_ROLE = "revision_of"  # lineage role: the parent is what the edit replaced


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def has_review_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """False for a store from before migration 014 opened read-only (read-only opens do not migrate)."""
    return con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'human_revisions'").fetchall()[0][0] > 0


# --- writes ------------------------------------------------------------------------------------------------------


def add_decision(con: duckdb.DuckDBPyConnection, row_id: str, kept: bool, reason: str | None, reviewer: str) -> None:
    con.execute("INSERT INTO decisions (row_id, stage, kept, reason, created_at, owner, reviewer) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", [row_id, HUMAN, kept, reason, _now(), HUMAN, reviewer])


def add_rating(con: duckdb.DuckDBPyConnection, row_id: str, reviewer: str, verdict: bool | None,
               score: float | None, note: str | None) -> None:
    con.execute("INSERT INTO human_ratings VALUES (?, ?, ?, ?, ?, ?)", [row_id, reviewer, verdict, score, note, _now()])


def add_revision(con: duckdb.DuckDBPyConnection, row_id: str, step: str, column: str, text: str, reviewer: str,
                 reason: str | None) -> str:
    """A new edit of a generated row's reply, with lineage to the row or the edit it replaces; returns its id."""
    when = _now()
    with transaction(con):
        previous = con.execute("SELECT _id FROM human_revisions WHERE row_id = ? ORDER BY created_at DESC LIMIT 1",
                               [row_id]).fetchall()
        previous_id = previous[0][0] if previous else row_id
        rid = hashlib.sha256(f"edit\0{previous_id}\0{reviewer}\0{when.isoformat()}\0{text}".encode()).hexdigest()[:20]
        con.execute("INSERT INTO human_revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [rid, row_id, previous_id, step, column, text, reviewer, reason, when])
        con.execute("INSERT INTO lineage VALUES (?, ?, ?)", [rid, previous_id, EDIT_ROLE])
    return rid


# --- what curation, export and training read -------------------------------------------------------------------


def _for_ids(con: duckdb.DuckDBPyConnection, ids: list[str], sql: str) -> list[tuple]:
    """Run `sql`, which joins the table `_review_ids` (id), for these ids."""
    import pyarrow as pa

    con.register("_review_ids", pa.table({"id": pa.array(ids, pa.string())}))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.unregister("_review_ids")


def latest_decisions(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, tuple[bool, str | None, str]]:
    """row_id -> (kept, reason, reviewer) of the latest person's decision on each of these rows that has one."""
    if not ids or not has_review_tables(con):
        return {}
    got = _for_ids(con, ids, "SELECT d.row_id, arg_max(d.kept, d.created_at), arg_max(d.reason, d.created_at), "
                             "arg_max(d.reviewer, d.created_at) FROM decisions d JOIN _review_ids i ON i.id = d.row_id "
                             f"WHERE d.owner = '{HUMAN}' GROUP BY d.row_id")
    return {rid: (kept, reason, who) for rid, kept, reason, who in got}


def newest_revisions(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, str]:
    """row_id -> the text of its newest edit, for these rows that have one."""
    if not ids or not has_review_tables(con):
        return {}
    got = _for_ids(con, ids, "SELECT h.row_id, arg_max(h.text, h.created_at) FROM human_revisions h "
                             "JOIN _review_ids i ON i.id = h.row_id GROUP BY h.row_id")
    return dict(got)


def with_revisions(con: duckdb.DuckDBPyConnection, rows: list[dict], column: str | None) -> list[dict]:
    """The rows with each edited reply (`column`) replaced by its newest edit."""
    edits = newest_revisions(con, [r["_id"] for r in rows]) if column else {}
    return [{**r, column: edits[r["_id"]]} if r["_id"] in edits else r for r in rows]


def reviewed(con: duckdb.DuckDBPyConnection, table, column: str | None):
    """An Arrow table of rows without those a person dropped last, and with each edited reply (`column`) replaced
    by its newest edit: what export and training read."""
    import pyarrow as pa

    if "_id" not in table.column_names or table.num_rows == 0:
        return table
    ids = table.column("_id").to_pylist()
    dropped = {rid for rid, (kept, _, _) in latest_decisions(con, ids).items() if not kept}
    if dropped:
        table = table.filter(pa.array([rid not in dropped for rid in ids]))
        ids = table.column("_id").to_pylist()
    edits = newest_revisions(con, ids) if column and column in table.column_names else {}
    if edits:
        i = table.column_names.index(column)
        values = [edits.get(rid, v) for rid, v in zip(ids, table.column(column).to_pylist())]
        table = table.set_column(i, pa.field(column, pa.string()), pa.array(values, pa.string()))
    return table


def row_exists(con: duckdb.DuckDBPyConnection, row_id: str, relations: list[str]) -> str | None:
    """The relation (a step's output or one of `relations`: sources) that has a row with this id, else None."""
    got = con.execute("SELECT step FROM outputs WHERE _id = ?", [row_id]).fetchall()
    if got:
        return got[0][0]
    for name in relations:
        if con.execute(f"SELECT count(*) FROM {q(name)} WHERE _id = ?", [row_id]).fetchall()[0][0]:
            return name
    return None


# --- what the review page, status and the report read ------------------------------------------------------------


def judged_ratings(con: duckdb.DuckDBPyConnection, judge: str, score_column: str) -> list[tuple]:
    """For a scoring judge step: (judged row id, the judge's mean score, the person's latest verdict, the person's
    latest 1-5 score) per judged row with a score. A rating on the judged row counts; else one on a judge's row."""
    if not has_review_tables(con) or not con.execute("SELECT count(*) FROM human_ratings").fetchall()[0][0]:
        return []
    return con.execute(
        f"""
        WITH j AS (SELECT _parent_id AS row_id, _id AS judge_id, TRY_CAST({q(score_column)} AS DOUBLE) AS s
                   FROM {q(judge)}),
        r AS (SELECT row_id, arg_max(verdict, created_at) FILTER (WHERE verdict IS NOT NULL) AS verdict,
                     arg_max(score, created_at) FILTER (WHERE score IS NOT NULL) AS score
              FROM human_ratings GROUP BY row_id)
        SELECT j.row_id, avg(j.s), coalesce(any_value(rp.verdict), any_value(rj.verdict)),
               coalesce(any_value(rp.score), any_value(rj.score))
        FROM j LEFT JOIN r rp ON rp.row_id = j.row_id LEFT JOIN r rj ON rj.row_id = j.judge_id
        WHERE j.s IS NOT NULL GROUP BY j.row_id ORDER BY j.row_id
        """).fetchall()


def review_counts(con: duckdb.DuckDBPyConnection) -> dict:
    """How many rows people kept and dropped (their latest decision), rated and edited, and whether a curation run
    came after their latest decision (so the funnel shows it)."""
    if not has_review_tables(con):
        return {"kept": 0, "dropped": 0, "rated": 0, "edited": 0, "applied": True}
    kept, dropped, last = con.execute(
        f"SELECT count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept), max(last_at) FROM (SELECT row_id, "
        f"arg_max(kept, created_at) AS kept, max(created_at) AS last_at FROM decisions WHERE owner = '{HUMAN}' "
        f"GROUP BY row_id)").fetchall()[0]
    curated_at = con.execute("SELECT max(created_at) FROM decisions WHERE owner = 'curation'").fetchall()[0][0]
    rated = con.execute("SELECT count(DISTINCT row_id) FROM human_ratings").fetchall()[0][0]
    edited = con.execute("SELECT count(DISTINCT row_id) FROM human_revisions").fetchall()[0][0]
    applied = last is None or (curated_at is not None and curated_at >= last)
    return {"kept": kept, "dropped": dropped, "rated": rated, "edited": edited, "applied": applied}
