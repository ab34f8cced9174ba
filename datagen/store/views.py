"""The names users query: one view per source and per step (SPEC.md "What the store shows"); `curated` is written
with the curation results (decisions.py).

The store composes every view's SQL. A strategy describes its step's view as a `StepView` (which input it joins,
which columns it produces, which decisions it reads); step and source names are checked SQL identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from datagen.store.sql import literal, quote_ident as q, transaction
from datagen.store.writes import create_table_from_rows

OUTPUT_COLUMNS = ["_id", "_parent_id", "_sample_index", "_teacher", "_finish_reason", "_created_at"]
# `_messages`: the rendered chat request the row answers (JSON), so what was asked is one column away
SYSTEM_COLUMNS = OUTPUT_COLUMNS + ["_messages"]


@dataclass
class StepView:
    name: str
    input: str | None  # the rows answer this relation's rows (joined on `_parent_id`); None: they stand alone
    inherited: list[str]  # the input's columns the rows carry
    produced: dict[str, str]  # produced column -> DuckDB type (JSON: kept as JSON)
    text_column: str | None  # the produced column that is the reply's text; the others come from `outputs.fields`
    decisions: str | None = None  # the decisions stage the view reads
    kept_only: bool = False  # only the rows that stage kept
    score_column: str | None = None  # a produced column that is that stage's score


@dataclass
class SourceView:
    name: str


@dataclass
class QueryView:
    name: str
    query: str  # the user's SQL
    limit: int | None = None
    columns: list[str] = field(default_factory=list)  # filled by sync: what the query returns


@dataclass
class CuratedView:
    """`curated`: the curation block's selected rows of its input, in selection order (`_curated` holds the ranks
    the last curation run chose; empty until one has run)."""

    input: str
    name: str = "curated"


def source_table(name: str) -> str:
    return f"_src_{name}"


def sync_views(con: duckdb.DuckDBPyConnection, sources: dict, views: list) -> None:
    """Reload file and inline sources into their tables (a changed file is picked up) and (re)create every view,
    in creation order (a query source may read an earlier step), in one transaction. `sources` maps a source's name
    to its rows, as Python rows or as the Arrow table the planner made of them (Plan.source_tables)."""
    with transaction(con):
        for name, rows in sources.items():
            create_table_from_rows(con, source_table(name), rows)
        for v in views:
            con.execute(f"CREATE OR REPLACE VIEW {q(v.name)} AS {view_sql(con, v)}")


def view_sql(con: duckdb.DuckDBPyConnection, v) -> str:
    if isinstance(v, SourceView):
        return f"SELECT * FROM {q(source_table(v.name))}"
    if isinstance(v, QueryView):
        return query_view_sql(v.query, describe_query(con, v.query), v.limit)
    if isinstance(v, CuratedView):
        return f"SELECT i.* FROM {q(v.input)} i JOIN _curated c ON c.row_id = i._id ORDER BY c.rank"
    return step_view_sql(v)


def describe_query(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """The columns a user's query returns (DuckDB checks it; an error propagates as duckdb.Error)."""
    return [r[0] for r in con.execute(f"DESCRIBE {query}").fetchall()]


def query_view_sql(query: str, columns: list[str], limit: int | None) -> str:
    """Wrap a query source so every row has an `_id`: kept from the rows it selects, else a hash of the row."""
    base = (f"SELECT * FROM ({query}) q" if "_id" in columns
            else f"SELECT md5(CAST(to_json(q) AS VARCHAR))[:20] AS _id, * FROM ({query}) q")
    return base + (f" LIMIT {int(limit)}" if limit else "")


def step_view_sql(v: StepView) -> str:
    cols = [f"p.{q(c)}" for c in v.inherited if not c.startswith("_")] if v.input else []
    for col, kind in v.produced.items():
        if col == v.text_column:
            cols.append(f"o.text AS {q(col)}")
        elif col == v.score_column:
            cols.append(f"d.score AS {q(col)}")
        elif kind == "JSON":
            cols.append(f"json_extract(o.fields, {literal('$.' + json_key(col))}) AS {q(col)}")
        else:
            cols.append(f"TRY_CAST(json_extract_string(o.fields, {literal('$.' + json_key(col))}) AS {kind}) "
                        f"AS {q(col)}")
    cols += [f"o.{c}" for c in OUTPUT_COLUMNS] + ["CAST(r.messages AS JSON) AS _messages"]
    sql = f"SELECT {', '.join(cols)} FROM outputs o JOIN requests r ON r.key = o.key"
    if v.input:
        sql += f" JOIN {q(v.input)} p ON o._parent_id = p._id"
    if v.decisions:
        join = "JOIN" if v.kept_only else "LEFT JOIN"
        sql += (f" {join} decisions d ON d.row_id = o._id AND d.stage = {literal(v.decisions)}"
                + (" AND d.kept" if v.kept_only else ""))
    return sql + f" WHERE {current_outputs(v.name)}"


def json_key(col: str) -> str:
    return '"' + col.replace('"', '\\"') + '"'


def current_outputs(step: str) -> str:
    """SQL condition on `o`: the step's outputs whose keys the current spec produces."""
    return f"o.step = {literal(step)} AND o.key IN (SELECT key FROM _plan WHERE step = {literal(step)})"
