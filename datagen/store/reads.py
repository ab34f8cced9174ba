"""Row reads: what the run loop, the strategies, curation, export and training ask of the store."""

from __future__ import annotations

import json

import duckdb

from datagen.errors import UserError
from datagen.store.sql import arrow_table, literal, quote_ident as q
from datagen.store.views import StepView, step_view_sql

MESSAGES_COLUMN = "__datagen_messages"  # the request's messages, fetched beside a row's own columns


def relation_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute("SELECT count(*) FROM (SELECT table_name AS n FROM duckdb_tables() UNION ALL "
                      "SELECT view_name FROM duckdb_views()) WHERE n = ?", [name]).fetchall()[0]
    return bool(row[0])


def rows(con: duckdb.DuckDBPyConnection, name: str, columns: list[str] | None = None,
         in_creation_order: bool = False) -> list[dict]:
    """The rows of a source, step or table as dicts; a step's in generation order when asked."""
    return table(con, name, columns, in_creation_order).to_pylist()


def table(con: duckdb.DuckDBPyConnection, name: str, columns: list[str] | None = None,
          in_creation_order: bool = False):
    """The same as an Arrow table."""
    cols = ", ".join(q(c) for c in columns) if columns else "*"
    order = " ORDER BY _created_at, _sample_index, _id" if in_creation_order else ""
    return arrow_table(con.sql(f"SELECT {cols} FROM {q(name)}{order}"))


def count(con: duckdb.DuckDBPyConnection, name: str) -> int | None:
    """Rows in a table or view; None when it is not there (or a view's relation is missing in this store)."""
    if not relation_exists(con, name):
        return None
    try:
        return con.execute(f"SELECT count(*) FROM {q(name)}").fetchall()[0][0]
    except duckdb.Error:
        return None


def all_step_rows(con: duckdb.DuckDBPyConnection, view: StepView, columns: list[str]) -> list[dict]:
    """Every current row of a step, including those its own decisions drop from its view (a vote recounts them)."""
    from dataclasses import replace

    produced = {c: t for c, t in view.produced.items() if c != view.score_column}
    sql = step_view_sql(replace(view, produced=produced, decisions=None, kept_only=False, score_column=None))
    cols = ", ".join(q(c) for c in columns)
    return arrow_table(con.sql(f"SELECT {cols} FROM ({sql}) ORDER BY _parent_id, _sample_index, _id")).to_pylist()


def column_values(con: duckdb.DuckDBPyConnection, name: str, column: str) -> list[tuple]:
    """(value, _id) of every row of a source or step, in its order."""
    return con.execute(f"SELECT {q(column)}, _id FROM {q(name)}").fetchall()


def _for_keys(con: duckdb.DuckDBPyConnection, keys: list[str], sql: str, params: list | None = None) -> list[tuple]:
    """Run `sql`, which joins the table `_wanted_keys` (key), for these keys: a join, not a 1M-item IN list."""
    import pyarrow as pa

    con.register("_wanted_keys", pa.table({"key": pa.array(keys, pa.string())}))
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.unregister("_wanted_keys")


def finished_keys(con: duckdb.DuckDBPyConnection, keys: list[str], failed_too: bool,
                  request_faults_too: bool = False) -> set[str]:
    """The keys among `keys` that have a reply; with `failed_too`, every failed one too; with `request_faults_too`,
    those that failed by their own fault (`error_kind` 'request': asked again, they would fail the same way)."""
    got = _for_keys(con, keys, "SELECT r.key FROM requests r JOIN _wanted_keys w ON w.key = r.key "
                               "WHERE r.status = 'done' OR (r.status = 'failed' AND (? OR (? AND r.error_kind = "
                               "'request')))", [failed_too, request_faults_too])
    return {k for (k,) in got}


def outputs_of(con: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[str, dict]:
    """key -> {_id, text, finish_reason} of the requests among `keys` that have a reply."""
    got = _for_keys(con, keys, "SELECT o.key, o._id, o.text, o._finish_reason FROM outputs o "
                               "JOIN _wanted_keys w ON w.key = o.key")
    return {k: {"_id": rid, "text": text, "finish_reason": finish} for k, rid, text, finish in got}


def request_results(con: duckdb.DuckDBPyConnection, keys: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """key -> (reply text, error) of the finished requests among `keys` (done or failed)."""
    got = _for_keys(con, keys, "SELECT r.key, o.text, r.error FROM requests r JOIN _wanted_keys w ON w.key = r.key "
                               "LEFT JOIN outputs o ON o.key = r.key WHERE r.status IN ('done', 'failed')")
    return {k: (text, error) for k, text, error in got}


def answered(con: duckdb.DuckDBPyConnection, step: str) -> dict[str, dict]:
    """Every output of a generation step: id -> its input, its text and the messages it answered."""
    got = con.execute("SELECT o._id, o._parent_id, o.text, r.messages FROM outputs o JOIN requests r ON r.key = o.key "
                      "WHERE o.step = ?", [step]).fetchall()
    return {rid: {"input": parent, "text": text, "messages": json.loads(messages) if messages else []}
            for rid, parent, text, messages in got}


def export_rows(con: duckdb.DuckDBPyConnection, name: str, kind: str):
    """The rows export and training read, as an Arrow table: a step's (or `curated`'s) rows with their request's
    messages in MESSAGES_COLUMN (`kind` step), a source's rows (`source`), or a judge step's pairs (`pairs`)."""
    if kind == "pairs":
        sql = f"SELECT * FROM pairs WHERE step = {literal(name)} ORDER BY _parent_id, _id"
    elif kind == "source":
        sql = f"SELECT v.* FROM {q(name)} v ORDER BY v._id"
    else:
        sql = (f"SELECT v.*, r.messages AS {MESSAGES_COLUMN} FROM {q(name)} v JOIN outputs o ON o._id = v._id "
               f"JOIN requests r ON r.key = o.key ORDER BY o._parent_id, o._sample_index, o._id")
    try:
        return arrow_table(con.sql(sql))
    except duckdb.CatalogException:
        what = "run `datagen curate SPEC`" if name == "curated" else "run `datagen run SPEC`"
        raise UserError(f"the store has no `{name}` rows yet; {what} first") from None
