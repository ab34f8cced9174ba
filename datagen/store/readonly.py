"""Read-only access for `datagen query`, `status` and `datagen.load`: no writes, ATTACH, COPY TO, INSTALL/LOAD."""

from __future__ import annotations

from pathlib import Path

import duckdb

from datagen.errors import UserError
from datagen.store.connection import open_store

ALLOWED = {"SELECT", "EXPLAIN"}


def open_readonly(path: Path) -> duckdb.DuckDBPyConnection:
    con = open_store(path, read_only=True)
    # no files, no network, no extensions; locked so a query cannot switch it back on
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_readonly_sql(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise UserError("no SQL statement given")
    for st in statements:
        kind = st.type.name
        if kind not in ALLOWED:
            raise UserError(f"`datagen query` only reads: {kind} statements are not allowed "
                            f"({st.query.strip()[:60]!r}); use SELECT")


def query_arrow(path: Path, sql: str):
    """The last statement's result as an Arrow table; only SELECT and EXPLAIN, on a read-only connection."""
    from datagen.store.sql import arrow_table

    check_readonly_sql(sql)
    con = open_readonly(path)
    try:
        statements = duckdb.extract_statements(sql)
        for st in statements[:-1]:
            con.execute(st.query)
        return arrow_table(con.sql(statements[-1].query))
    except duckdb.Error as exc:
        raise UserError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def relation_arrow(path: Path, name: str):
    """Every row of a step, source, `curated` or store table, as an Arrow table."""
    from datagen.store.reads import relation_exists, table

    con = open_readonly(path)
    try:
        if not relation_exists(con, name):
            known = [r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal AND view_name NOT LIKE '\\_%' ESCAPE '\\' "
                "ORDER BY 1").fetchall()]
            hint = "; run the curation first (`datagen curate`)" if name == "curated" else ""
            raise UserError(f"the store has no `{name}`{hint}; it has: {', '.join(known) or 'nothing yet'}")
        return table(con, name)
    finally:
        con.close()
