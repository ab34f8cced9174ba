"""Meta-information synthesis (`strategy: meta`, formerly `curate`): the teacher writes new inputs from meta values,
x ~ pT(x | I + m).

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

from datagen.errors import UserError
from datagen.keys import canonical, logprobs_key, request_key
from datagen.spec.models import NAME_RE, MetaStep
from datagen.spec.plan import PlannedStep, check_template, produced_columns, step_teachers, step_view
from datagen.store import reads
from datagen.store.shape import column_types
from datagen.store.writes import create_table_from_rows
from datagen.strategies import label
from datagen.strategies.base import Job, PlannedRequest, Round, StepEstimate, Volume, spread

STEP = MetaStep


def reads_from(step: MetaStep) -> list[tuple[str, tuple]]:
    return [(v.from_, ("meta", dim, "from")) for dim, v in step.meta.items() if not isinstance(v, list)]


def volume(step: MetaStep, teachers: int, volume_of) -> Volume | None:
    """Every combination (or `count` drawn ones) `per_combination` times; a dimension read from a relation has at
    most as many values as it has rows."""
    sizes = [len(dict.fromkeys(map(repr, v))) if isinstance(v, list) else getattr(volume_of(v.from_), "rows", None)
             for v in step.meta.values()]
    if None in sizes:
        return None
    total = math.prod(sizes) if step.combine == "product" else min(step.count, math.prod(sizes))
    return Volume(total, step.per_combination)


def template_texts(step: MetaStep) -> list[str]:
    return [t for t in (step.system, step.prompt) if t]


def coverage_columns(step: MetaStep) -> dict[str, list[str]]:
    """Each meta dimension, with the values the spec lists (none for one read from rows: the rows know them)."""
    return {dim: [str(x) for x in v] if isinstance(v, list) else [] for dim, v in step.meta.items()}


def row_prompt(step) -> None:
    return None  # it makes its own inputs

# column types a meta value keeps in the step's view; anything else is kept as JSON
SCALAR_TYPES = {"VARCHAR", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "DOUBLE",
                "FLOAT", "BOOLEAN", "DATE", "TIMESTAMP"}


def plan(loaded, plan, shape, i: int, step: MetaStep) -> PlannedStep:
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    if step.n != 1:
        raise loaded.error(loc + ("n",), "a meta step asks `per_combination` samples per combination; "
                                         "use per_combination instead of n")
    if not step.meta:
        raise loaded.error(loc + ("meta",), "meta needs at least one name, e.g. {difficulty: [easy, hard]}")
    if step.combine == "sample" and step.count is None:
        raise loaded.error(loc + ("combine",), "combine: sample draws `count` combinations; set count")
    if step.combine == "product" and step.count is not None:
        raise loaded.error(loc + ("count",), "count only applies to `combine: sample`; remove it or set "
                                             "combine: sample")
    types: dict[str, str] = {}
    sizes: list[int | None] = []
    for dim, values in step.meta.items():
        types[dim], size = _plan_dim(loaded, plan, shape, loc + ("meta", dim), dim, values, step.output)
        sizes.append(size)
    if step.combine == "sample" and all(s is not None for s in sizes):
        total = math.prod(sizes)
        if step.count > total:
            raise loaded.error(loc + ("count",), f"count {step.count} is more than the {total} combinations there "
                                                 "are; lower it or use combine: product")
    context = set(step.meta)
    check_template(loaded, loc + ("prompt",), step.prompt, context, step.name)
    if step.system:
        check_template(loaded, loc + ("system",), step.system, context, step.name)
    produced = dict(types)
    produced.update(produced_columns(loaded, loc, step.output, None))
    return PlannedStep(step, i, None, [], produced, names, step_view(step, None, [], produced))


def _plan_dim(loaded, plan, shape, loc: tuple, dim: str, values, output: str
              ) -> tuple[str, int | None]:
    """The dimension's column type and (when known before the run) its number of distinct values."""
    if not NAME_RE.match(dim) or dim.startswith("_"):
        raise loaded.error(loc, f"meta name `{dim}` becomes a column: use letters, digits and _, not starting with _")
    if dim == output:
        raise loaded.error(loc, f"meta name `{dim}` is also the step's `output` column; rename one")
    if isinstance(values, list):
        if not values:
            raise loaded.error(loc, "a meta list needs at least one value")
        for j, v in enumerate(values):
            if not isinstance(v, (str, int, float, bool)):
                raise loaded.error(loc + (j,), f"meta values are plain strings or numbers, got {type(v).__name__}; "
                                               "to use rows of data, read a column of a source: {from: ..., column: ...}")
        return _list_type(values), len(dict.fromkeys(map(repr, values)))
    cols = column_types(shape, values.from_)
    if values.column not in cols:
        shown = ", ".join(c for c in cols if not c.startswith("_"))
        raise loaded.error(loc + ("column",), f"`{values.column}` is not a column of `{values.from_}`; "
                                              f"columns: {shown}")
    kind = cols[values.column]
    rows = plan.source_rows.get(values.from_)
    size = len({repr(r.get(values.column)) for r in rows if r.get(values.column) is not None}) if rows else None
    if size == 0:
        raise loaded.error(loc + ("column",), f"`{values.from_}`.`{values.column}` has no values")
    return (kind if kind in SCALAR_TYPES else "JSON"), size


def _list_type(values: list) -> str:
    if all(isinstance(v, bool) for v in values):
        return "BOOLEAN"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "BIGINT"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "DOUBLE"
    return "VARCHAR"


def plan_line(st: PlannedStep) -> str:
    s = st.spec
    return f"over {', '.join(s.meta)} ({s.combine})"


def meta_table(step_name: str) -> str:
    return f"_meta_{step_name}"


def dimension_values(con, step: MetaStep) -> dict[str, list[tuple[Any, str | None]]]:
    """Each dimension's values in order, with the id of the first source row holding each (None for list values)."""
    out: dict[str, list[tuple[Any, str | None]]] = {}
    for dim, values in step.meta.items():
        if isinstance(values, list):
            out[dim] = [(v, None) for v in dict.fromkeys(values)]
            continue
        rows = reads.column_values(con, values.from_, values.column)
        first: dict[str, tuple[Any, str]] = {}
        for value, rid in rows:
            if value is not None:
                first.setdefault(canonical(value), (value, rid))
        if not first:
            raise UserError(f"step {step.name}: meta `{dim}` reads `{values.from_}`.`{values.column}`, which has no "
                            "values; fill the source or list the values")
        out[dim] = list(first.values())
    return out


def combinations(step: MetaStep, dims: dict[str, list], seed: int) -> list[tuple[int, ...]]:
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


def combination_rows(step: MetaStep, types: dict[str, str], dims: dict[str, list], picks: list[tuple[int, ...]]
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


def build_requests(step: MetaStep, combos: list[dict], teacher_name: str, identity: dict, sampling: dict
                   ) -> list[PlannedRequest]:
    out = []
    for combo in combos:
        meta = {k: v for k, v in combo.items() if not k.startswith("_")}
        messages = label.render_messages(step, meta, [])
        for index in range(step.per_combination):
            key = request_key(step=step.name, parent_id=combo["_id"], messages=messages, teacher=identity,
                              sampling=sampling, json_schema=None, logprobs=logprobs_key(step), sample_index=index)
            out.append(PlannedRequest(key, step.name, combo["_id"], index, messages, teacher_name,
                                            [(rid, "meta") for rid in combo["_meta_rows"]], fields=meta))
    return out


def rounds(job: Job):
    step: MetaStep = job.step
    dims = dimension_values(job.con, step)
    combos = combination_rows(step, job.st.produced, dims, combinations(step, dims, job.seed))
    create_table_from_rows(job.con, meta_table(step.name), [{k: v for k, v in c.items() if k != "_meta_rows"}
                                                             for c in combos])
    job.log(f"{step.name}: {len(combos)} combinations x {step.per_combination}")
    t = job.teachers[0]
    yield Round(build_requests(step, combos, t.name, t.identity, t.sampling))


def estimate(job: Job, volume_of) -> StepEstimate:
    """Every combination `per_combination` times. A dimension read from an earlier step has at most as many values
    as that step has rows, and its prompts wait for the run."""
    step: MetaStep = job.step
    known = {dim: v for dim, v in step.meta.items() if isinstance(v, list) or reads.count(job.con, v.from_)}
    prompts: list[list[dict]] = []
    if len(known) == len(step.meta):
        dims = dimension_values(job.con, step)
        combos = combination_rows(step, job.st.produced, dims, combinations(step, dims, job.seed))
        prompts = [label.render_messages(step, {k: v for k, v in c.items() if not k.startswith("_")}, [])
                   for c in spread(combos)]
        return StepEstimate(len(combos) * step.per_combination, prompts)
    return StepEstimate(volume(step, len(job.teachers), volume_of).rows, prompts)


def json_schema(step) -> None:
    return None


def parse(step, text: str, req, sample=None) -> tuple[dict, None]:
    return {}, None


def finish(job: Job) -> None:
    pass


def card_notes(step) -> list[str]:
    return [f"meta-information synthesis over {', '.join(step.meta)} ({step.combine}), "
            f"{step.per_combination} per combination"]


def coverage(con, step: MetaStep) -> dict | None:
    """Rows per meta value (0 for values never drawn or never answered) and the requested combinations without rows.

    None when the step has not run yet (no `_meta_<step>` table)."""
    table = meta_table(step.name)
    if not reads.relation_exists(con, table):
        return None
    dims = list(step.meta)
    rows = reads.rows(con, step.name, ["_parent_id", *dims])
    per_value: dict[str, list[tuple[str, int]]] = {}
    for dim, values in dimension_values(con, step).items():
        counts: dict[str, int] = {}
        for r in rows:
            counts[_label(r[dim])] = counts.get(_label(r[dim]), 0) + 1
        per_value[dim] = [(_label(v), counts.get(_label(v), 0)) for v, _ in values]
    answered: dict[str, int] = {}
    for r in rows:
        answered[r["_parent_id"]] = answered.get(r["_parent_id"], 0) + 1
    cells = sorted(tuple(_label(m[d]) for d in dims) + (answered.get(m["_id"], 0),)
                   for m in reads.rows(con, table, ["_id", *dims]))
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


def status_lines(con, st: PlannedStep) -> list[str]:
    import duckdb

    try:
        cov = coverage(con, st.spec)
    except duckdb.CatalogException:  # the step's view is not there yet (the spec changed since the last run)
        return []
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
