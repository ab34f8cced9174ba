"""The plan's scratch database: an in-memory DuckDB holding, for every source and step, a relation with the
columns it will have (sources with their rows, steps empty), so planning can check names and `query` sources
against DuckDB itself before anything runs."""

from __future__ import annotations

import duckdb

from datagen.store.sql import quote_ident as q
from datagen.store.views import SYSTEM_COLUMNS, describe_query, query_view_sql


def open_shape() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:")


def column_types(shape: duckdb.DuckDBPyConnection, name: str) -> dict[str, str]:
    return {r[0]: r[1] for r in shape.execute(f"DESCRIBE {q(name)}").fetchall()}


def create_query_view(shape: duckdb.DuckDBPyConnection, name: str, query: str, limit: int | None) -> list[str]:
    """Create a query source's view (a duckdb.Error says what is wrong with the query); returns its columns."""
    shape.execute(f"CREATE VIEW {q(name)} AS {query_view_sql(query, describe_query(shape, query), limit)}")
    return list(column_types(shape, name))


def create_step(shape: duckdb.DuckDBPyConnection, name: str, input_name: str | None, inherited: list[str],
                produced: dict[str, str]) -> None:
    """An empty relation with a step's columns: its input's, the produced ones with their types, the system ones."""
    cols = [q(c) for c in inherited if not c.startswith("_")]
    cols += [f"NULL::{t} AS {q(c)}" for c, t in produced.items()]
    cols += [f"NULL::VARCHAR AS {c}" for c in SYSTEM_COLUMNS]
    source = f" FROM {q(input_name)}" if input_name else ""
    shape.execute(f"CREATE TABLE {q(name)} AS SELECT {', '.join(cols)}{source} LIMIT 0")
