"""What the review page reads (datagen/review/): a page of a step's, source's or `curated`'s rows with each row's
fate, filtered; one row's whole story (its request, decisions, ratings, edits, lineage, soft labels, tool calls);
and a copy of a store that a running job holds, to read while it runs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from datagen.errors import UserError
from datagen.store.human import HUMAN, has_review_tables
from datagen.store.sql import arrow_table, quote_ident as q

_NO_HUMAN = "SELECT NULL::VARCHAR AS row_id, NULL::BOOLEAN AS kept, NULL::VARCHAR AS reason, NULL::VARCHAR AS reviewer " \
            "WHERE false"


@dataclass
class RowFilter:
    kept: bool | None = None  # the row's fate: a person's latest decision, else dropped by any stage or kept
    stage: str | None = None  # only decisions of this stage count for `reason` and the score
    reason: str | None = None  # a decision's reason contains this (case-insensitive)
    score_min: float | None = None
    score_max: float | None = None
    text: str | None = None  # any column contains this (case-insensitive)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _filtered(con, rel: str, creation_order: bool, score_column: str | None, f: RowFilter) -> tuple[str, list]:
    """The SQL of the filtered rows (ordered by `__pos`), with its parameters."""
    human = (f"SELECT row_id, arg_max(kept, created_at) AS kept, arg_max(reason, created_at) AS reason, "
             f"arg_max(reviewer, created_at) AS reviewer FROM decisions WHERE owner = '{HUMAN}' GROUP BY row_id"
             if has_review_tables(con) else _NO_HUMAN)
    order = "ORDER BY _created_at, _sample_index, _id" if creation_order else ""
    stage_cond, params = ("AND stage = ?", [f.stage]) if f.stage else ("", [])
    score = f"TRY_CAST(v.{q(score_column)} AS DOUBLE)" if score_column else "sc.score"
    sql = f"""
        WITH v AS (SELECT row_number() OVER ({order}) AS __pos, * FROM {q(rel)}),
        hd AS ({human}),
        od AS (SELECT row_id, bool_or(NOT kept) AS dropped,
                      arg_min(stage || ': ' || coalesce(reason, '(no reason)'), created_at) FILTER (WHERE NOT kept) AS why
               FROM decisions WHERE owner IS DISTINCT FROM '{HUMAN}' GROUP BY row_id),
        sc AS (SELECT row_id, arg_max(score, created_at) AS score FROM decisions
               WHERE score IS NOT NULL {stage_cond} GROUP BY row_id),
        f AS (SELECT v.*, coalesce(hd.kept, NOT coalesce(od.dropped, false)) AS __kept, od.why AS __why,
                     hd.kept AS __human_kept, hd.reason AS __human_reason, hd.reviewer AS __reviewer,
                     {score} AS __score, CAST(to_json(v) AS VARCHAR) AS __text
              FROM v LEFT JOIN hd ON hd.row_id = v._id LEFT JOIN od ON od.row_id = v._id
              LEFT JOIN sc ON sc.row_id = v._id)
        SELECT * EXCLUDE (__text) FROM f WHERE true"""
    if f.kept is not None:
        sql += " AND __kept = ?"
        params.append(f.kept)
    if f.reason or f.stage:
        sql += " AND EXISTS (SELECT 1 FROM decisions x WHERE x.row_id = f._id"
        if f.stage:
            sql += " AND x.stage = ?"
            params.append(f.stage)
        if f.reason:
            sql += " AND x.reason ILIKE ? ESCAPE '\\'"
            params.append(_like(f.reason))
        sql += ")"
    for bound, op in ((f.score_min, ">="), (f.score_max, "<=")):
        if bound is not None:
            sql += f" AND __score {op} ?"
            params.append(bound)
    if f.text:
        sql += " AND __text ILIKE ? ESCAPE '\\'"
        params.append(_like(f.text))
    return sql, params


def page(con: duckdb.DuckDBPyConnection, rel: str, f: RowFilter, offset: int, limit: int, creation_order: bool,
         score_column: str | None = None) -> tuple[int, list[dict]]:
    """(rows matching, one page of them as dicts, in the relation's order); each row carries `__kept`, `__why`
    (the first stage that dropped it, with the reason), `__human_kept`, `__human_reason`, `__reviewer`, `__score`."""
    sql, params = _filtered(con, rel, creation_order, score_column, f)
    total = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchall()[0][0]
    rows = _dicts(con, f"{sql} ORDER BY __pos LIMIT ? OFFSET ?", params + [limit, offset])
    return total, rows


def stages_of(con: duckdb.DuckDBPyConnection, rel: str) -> list[str]:
    """The decision stages that decided about some row of `rel`."""
    got = con.execute(f"SELECT DISTINCT stage FROM decisions WHERE row_id IN (SELECT _id FROM {q(rel)}) ORDER BY 1")
    return [s for (s,) in got.fetchall()]


def one_row(con: duckdb.DuckDBPyConnection, rel: str, row_id: str) -> dict | None:
    got = _dicts(con, f"SELECT * FROM {q(rel)} WHERE _id = ? LIMIT 1", [row_id])
    return got[0] if got else None


def output_of(con: duckdb.DuckDBPyConnection, row_id: str) -> dict | None:
    """A generated row as stored: its step, parent, reply text, finish reason, teacher and request messages."""
    got = _dicts(con, "SELECT o.step, o._parent_id AS parent_id, o.text, o._finish_reason AS finish_reason, "
                      "o._teacher AS teacher, r.messages, r.prompt_tokens, r.completion_tokens FROM outputs o "
                      "LEFT JOIN requests r ON r.key = o.key WHERE o._id = ?", [row_id])
    return got[0] if got else None


def _dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list) -> list[dict]:
    return arrow_table(con.sql(sql, params=params)).to_pylist()


def decisions_of(con: duckdb.DuckDBPyConnection, row_id: str) -> list[dict]:
    reviewer = "reviewer" if has_review_tables(con) else "NULL AS reviewer"
    return _dicts(con, f"SELECT stage, owner, kept, reason, score, duplicate_of, {reviewer}, created_at "
                       "FROM decisions WHERE row_id = ? ORDER BY created_at, stage", [row_id])


def ratings_of(con: duckdb.DuckDBPyConnection, row_id: str) -> list[dict]:
    if not has_review_tables(con):
        return []
    return _dicts(con, "SELECT reviewer, verdict, score, note, created_at FROM human_ratings WHERE row_id = ? "
                       "ORDER BY created_at", [row_id])


def revisions_of(con: duckdb.DuckDBPyConnection, row_id: str) -> list[dict]:
    if not has_review_tables(con):
        return []
    return _dicts(con, "SELECT _id, previous_id, column_name, text, reviewer, reason, created_at "
                       "FROM human_revisions WHERE row_id = ? ORDER BY created_at", [row_id])


def lineage_of(con: duckdb.DuckDBPyConnection, row_id: str) -> dict[str, list[dict]]:
    parents = _dicts(con, "SELECT parent_id AS id, role FROM lineage WHERE child_id = ? ORDER BY role, 1", [row_id])
    children = _dicts(con, "SELECT l.child_id AS id, l.role, o.step FROM lineage l LEFT JOIN outputs o "
                           "ON o._id = l.child_id WHERE l.parent_id = ? ORDER BY l.role, 1 LIMIT 200", [row_id])
    return {"parents": parents, "children": children}


def tokens_of(con: duckdb.DuckDBPyConnection, row_id: str, limit: int) -> list[dict]:
    """The teacher's soft labels of a row's reply, in order: token, logprob, the top-k alternatives (`top`: their
    strings where the store keeps them, else their token ids) and their logprobs, from the view `logprobs`."""
    return _dicts(con, "SELECT token, logprob, coalesce(top_tokens, CAST(top_ids AS VARCHAR[])) AS top, top_logprobs "
                       "FROM logprobs WHERE row_id = ? ORDER BY position LIMIT ?", [row_id, limit])


def tool_calls_of(con: duckdb.DuckDBPyConnection, row_id: str) -> list[dict]:
    """Every tool call of a trajectory whose last turn is `row_id` (its turns are linked by `previous_turn`)."""
    return _dicts(con, """
        WITH RECURSIVE turns(id, depth) AS (
            SELECT CAST(? AS VARCHAR), 0
            UNION ALL
            SELECT l.parent_id, t.depth + 1 FROM lineage l JOIN turns t ON l.child_id = t.id
            WHERE l.role = 'previous_turn' AND t.depth < 500)
        SELECT c.output_id, c.call_index, c.tool, c.arguments, c.result, c.error, c.seconds
        FROM tool_calls c JOIN turns t ON c.output_id = t.id ORDER BY t.depth DESC, c.call_index
        """, [row_id])


def snapshot(path: Path, folder: Path) -> Path:
    """A copy of the store at `path` (and its write-ahead log), migrated, to read while another process holds it.
    The copy is consistent as of the last commit the copy caught; a copy that does not open says so."""
    from datagen.store.connection import open_store

    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / "snapshot.duckdb"
    for suffix in ("", ".wal"):
        Path(str(dest) + suffix).unlink(missing_ok=True)
        if Path(str(path) + suffix).exists():
            shutil.copyfile(str(path) + suffix, str(dest) + suffix)
    try:
        open_store(dest).close()
    except (UserError, duckdb.Error) as exc:
        raise UserError(f"the store is held by another process and a copy of it could not be read ({exc}); "
                        "wait for that process to finish") from None
    return dest
