"""The few SQL helpers every store module shares (no imports of the rest of the store, so no cycles)."""

from __future__ import annotations

import duckdb


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A SQL string literal, for the few places that cannot take parameters (view definitions)."""
    return "'" + text.replace("'", "''") + "'"


def arrow_table(cursor):
    """The result as a pyarrow Table (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(cursor, "to_arrow_table", None) or cursor.fetch_arrow_table
    return fetch()


class transaction:
    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
