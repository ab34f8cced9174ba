"""The names users query: one view per source and per step (SPEC.md "What the store shows")."""

from __future__ import annotations

import duckdb

from datagen.spec.plan import Plan, PlannedStep, create_table_from_rows, query_view_sql
from datagen.store.connection import quote_ident as q
from datagen.store.writes import transaction


def source_table(name: str) -> str:
    return f"_src_{name}"


def sync_sources(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Reload file and inline sources into their tables (a changed file is picked up) and (re)create every view."""
    with transaction(con):
        for name, rows in plan.source_rows.items():
            create_table_from_rows(con, source_table(name), rows, plan.loaded, ("sources", name))
        for kind, name in plan.order:
            if kind == "source":
                con.execute(f"CREATE OR REPLACE VIEW {q(name)} AS SELECT * FROM {q(source_table(name))}")
            elif kind == "query":
                source = plan.spec.sources[name]
                cols = [r[0] for r in con.execute(f"DESCRIBE {source.query}").fetchall()]
                con.execute(f"CREATE OR REPLACE VIEW {q(name)} AS {query_view_sql(source.query, cols, source.limit)}")
            else:
                con.execute(f"CREATE OR REPLACE VIEW {q(name)} AS {step_view_sql(plan.step(name))}")


def step_view_sql(st: PlannedStep) -> str:
    if st.spec.strategy == "expand":
        from datagen.strategies.expand import view_sql

        return view_sql(st)
    if st.spec.strategy == "curate":
        from datagen.strategies.curate import view_sql

        return view_sql(st)
    if getattr(st.spec, "agreement", None) is not None:
        from datagen.strategies.agreement import view_sql

        return view_sql(st)
    cols = [f"p.{q(c)}" for c in st.input_columns if not c.startswith("_")] + output_columns(st)
    # step names are checked SQL identifiers, so inlining them as literals is safe
    extra = f" AND {st.view_filter}" if st.view_filter else ""
    return (
        f"SELECT {', '.join(cols)} FROM outputs o JOIN {q(st.input)} p ON o._parent_id = p._id "
        f"WHERE {current_outputs(st)}{extra}"
    )


def output_columns(st: PlannedStep, skip: tuple[str, ...] = ()) -> list[str]:
    """The produced columns (the output text, typed fields from `outputs.fields`) and the system columns of `o`."""
    cols = []
    for col, kind in st.produced.items():
        if col in skip:
            continue
        if col == st.spec.output and st.output_is_text:
            cols.append(f"o.text AS {q(col)}")
        elif kind == "JSON":
            cols.append(f"json_extract(o.fields, '$.\"{col}\"') AS {q(col)}")
        else:
            cols.append(f"TRY_CAST(json_extract_string(o.fields, '$.\"{col}\"') AS {kind}) AS {q(col)}")
    return cols + ["o._id", "o._parent_id", "o._sample_index", "o._teacher", "o._finish_reason", "o._created_at"]


def current_outputs(st: PlannedStep) -> str:
    """SQL condition on `o`: the step's outputs whose keys the current spec produces."""
    return f"o.step = '{st.name}' AND o.key IN (SELECT key FROM _plan WHERE step = '{st.name}')"
