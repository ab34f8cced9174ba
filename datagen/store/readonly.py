"""Read-only access for `datagen query` and `datagen status`: no writes, no ATTACH, no COPY TO, no INSTALL/LOAD."""

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


def run_query(path: Path, sql: str) -> tuple[list[str], list[tuple]]:
    check_readonly_sql(sql)
    con = open_readonly(path)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, cur.fetchall()
    except duckdb.Error as exc:
        raise UserError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()
