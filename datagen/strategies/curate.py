"""Meta-information synthesis: the teacher writes new inputs from meta values, x ~ pT(x | I + m).

`meta` names dimensions, each a list of values or the distinct values of a source column (in order of first
appearance). `combine: product` takes every combination; `combine: sample` draws `count` of them without replacement
with the run's seed. Each combination is one input row, `_id` a hash of its values, kept in the table
`_meta_<step>`; the step asks `per_combination` samples of it. Rows keep the meta values as columns; lineage links a
row to its combination (`input`) and, for values read from a source, to the first source row with that value
(`meta`). The requests of a fixed set of combinations are known up front, so resume works as for labeling.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import duckdb

from datagen.errors import UserError
from datagen.keys import canonical, request_key
from datagen.spec.models import CurateStep
from datagen.spec.plan import Plan, PlannedStep, create_table_from_rows
from datagen.store.connection import quote_ident
from datagen.store.views import current_outputs, output_columns
from datagen.strategies import label


def view_sql(st: PlannedStep) -> str:
    return f"SELECT {', '.join(output_columns(st))} FROM outputs o WHERE {current_outputs(st)}"


def meta_table(step_name: str) -> str:
    return f"_meta_{step_name}"


def dimension_values(con, step: CurateStep) -> dict[str, list[tuple[Any, str | None]]]:
    """Each dimension's values in order, with the id of the first source row holding each (None for list values)."""
    out: dict[str, list[tuple[Any, str | None]]] = {}
    for dim, values in step.meta.items():
        if isinstance(values, list):
            out[dim] = [(v, None) for v in dict.fromkeys(values)]
            continue
        rows = con.execute(f"SELECT {quote_ident(values.column)}, _id FROM {quote_ident(values.from_)}").fetchall()
        first: dict[str, tuple[Any, str]] = {}
        for value, rid in rows:
            if value is not None:
                first.setdefault(canonical(value), (value, rid))
        if not first:
            raise UserError(f"step {step.name}: meta `{dim}` reads `{values.from_}`.`{values.column}`, which has no "
                            "values; fill the source or list the values")
        out[dim] = list(first.values())
    return out


def combinations(step: CurateStep, dims: dict[str, list], seed: int) -> list[tuple[int, ...]]:
    """Index tuples into the dimensions' value lists: all of them (product) or `count` drawn with the seed (sample)."""
    sizes = [len(v) for v in dims.values()]
    total = math.prod(sizes)
    if step.combine == "product":
        picks = range(total)
    else:
        if step.count > total:
            raise UserError(f"step {step.name}: count {step.count} is more than the {total} combinations there are; "
                            "lower it or use combine: product")
        # drawn as numbers and decoded, so a huge product is never materialised; sorted to keep product order
        picks = sorted(random.Random(f"{seed}\0{step.name}\0combine").sample(range(total), step.count))
    return [_decode(p, sizes) for p in picks]


def _decode(number: int, sizes: list[int]) -> tuple[int, ...]:
    out = []
    for size in reversed(sizes):
        number, rest = divmod(number, size)
        out.append(rest)
    return tuple(reversed(out))


def combination_rows(step: CurateStep, types: dict[str, str], dims: dict[str, list], picks: list[tuple[int, ...]]
                     ) -> list[dict]:
    rows = []
    for pick in picks:
        values = {dim: _plain(dims[dim][j][0], types[dim]) for dim, j in zip(dims, pick)}
        rid = hashlib.sha256(f"{step.name}\0{canonical(values)}".encode()).hexdigest()[:20]
        sources = [dims[dim][j][1] for dim, j in zip(dims, pick) if dims[dim][j][1] is not None]
        rows.append({"_id": rid, **values, "_meta_rows": sources})
    return rows


def _plain(value: Any, kind: str) -> Any:
    """A value as JSON can hold it; a VARCHAR dimension of mixed values holds them as text."""
    if kind == "VARCHAR" and not isinstance(value, str):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None or kind == "JSON":
        return value
    return str(value)


def build_requests(step: CurateStep, combos: list[dict], teacher_name: str, identity: dict, sampling: dict
                   ) -> list[label.PlannedRequest]:
    out = []
    for combo in combos:
        meta = {k: v for k, v in combo.items() if not k.startswith("_")}
        messages = label.render_messages(step, meta, [])
        for index in range(step.per_combination):
            key = request_key(step=step.name, parent_id=combo["_id"], messages=messages, teacher=identity,
                              sampling=sampling, json_schema=None, logprobs=step.logprobs, sample_index=index)
            out.append(label.PlannedRequest(key, step.name, combo["_id"], index, messages, teacher_name,
                                            [(rid, "meta") for rid in combo["_meta_rows"]], fields=meta))
    return out


def run_step(con: duckdb.DuckDBPyConnection, plan: Plan, st: PlannedStep, teachers: dict, progress, log):
    from datagen import run as runloop
    from datagen.store.writes import insert_pending

    step: CurateStep = st.spec
    teacher_name = st.teachers[0]
    sampling, identity = runloop.teacher_setup(plan, teacher_name, step)
    dims = dimension_values(con, step)
    combos = combination_rows(step, st.produced, dims, combinations(step, dims, plan.spec.seed))
    table = [{k: v for k, v in c.items() if k != "_meta_rows"} for c in combos]
    create_table_from_rows(con, meta_table(step.name), table, None, ())
    requests = build_requests(step, combos, teacher_name, identity, sampling)
    insert_pending(con, step.name, requests, [r.key for r in requests])
    done = {k for (k,) in con.execute("SELECT key FROM requests WHERE step = ? AND status = 'done'",
                                      [step.name]).fetchall()}
    todo = [r for r in requests if r.key not in done]
    summary = runloop.StepSummary(step.name, planned=len(requests), cached=len(requests) - len(todo))
    log(f"{step.name}: {len(combos)} combinations x {step.per_combination}")
    if progress:
        progress(step.name, summary.cached, summary.planned)
    runloop.generate(con, plan, st, teacher_name, todo, teachers, summary, progress, log)
    if todo:
        runloop.check_budget(step, summary, final=True)
    return summary


def coverage(con, step: CurateStep) -> dict | None:
    """Rows per meta value (0 for values never drawn or never answered) and the requested combinations without rows.

    None when the step has not run yet (no `_meta_<step>` table)."""
    table = meta_table(step.name)
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0]:
        return None
    dims = list(step.meta)
    view = quote_ident(step.name)
    per_value: dict[str, list[tuple[str, int]]] = {}
    for dim, values in dimension_values(con, step).items():
        counts: dict[str, int] = {}
        for value, n in con.execute(f"SELECT {quote_ident(dim)}, count(*) FROM {view} GROUP BY 1").fetchall():
            counts[_label(value)] = counts.get(_label(value), 0) + n
        per_value[dim] = [(_label(v), counts.get(_label(v), 0)) for v, _ in values]
    cols = ", ".join(f"CAST(m.{quote_ident(d)} AS VARCHAR)" for d in dims)
    cells = con.execute(f"SELECT {cols}, count(s._id) AS n FROM {quote_ident(table)} m LEFT JOIN {view} s "
                        f"ON s._parent_id = m._id GROUP BY ALL ORDER BY ALL").fetchall()
    empty = [c[:-1] for c in cells if c[-1] == 0]
    total = math.prod(len(v) for v in per_value.values())
    return {"dims": dims, "per_value": per_value, "requested": len(cells), "possible": total, "empty": empty}


def _label(value: Any) -> str:
    """One text per value, whether it comes from the spec (1, True) or back from a typed column (1.0, true)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def status_lines(con, step: CurateStep) -> list[str]:
    cov = coverage(con, step)
    if cov is None:
        return []
    lines = [f"  coverage over {' x '.join(cov['dims'])}: {cov['requested']} of {cov['possible']} combinations "
             f"requested, {len(cov['empty'])} of them without rows"]
    for dim, counts in cov["per_value"].items():
        lines.append(f"    {dim}: " + ", ".join(f"{v} {n}" for v, n in counts))
    if cov["empty"]:
        shown = "; ".join(", ".join(c) for c in cov["empty"][:10])
        lines.append(f"    empty cells: {shown}{' ...' if len(cov['empty']) > 10 else ''}")
    return lines
