"""Plan-time checks of a `curate` step: meta names, their sources and columns, the combination count, the templates."""

from __future__ import annotations

import math

from datagen.spec.load import LoadedSpec
from datagen.spec.models import NAME_RE, CurateStep
from datagen.spec.plan import Plan, PlannedStep, check_template, produced_columns, step_teachers
from datagen.store.connection import quote_ident

# column types a meta value keeps in the step's view; anything else is kept as JSON
SCALAR_TYPES = {"VARCHAR", "BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "DOUBLE",
                "FLOAT", "BOOLEAN", "DATE", "TIMESTAMP"}


def plan_curate(loaded: LoadedSpec, plan: Plan, shape, i: int, step: CurateStep) -> PlannedStep:
    loc = ("steps", i)
    if isinstance(step.teacher, list):
        raise loaded.error(loc + ("teacher",), "several teachers for one step are for `strategy: label`; "
                                               "name one teacher here (and label its rows in a next step)")
    names = step_teachers(loaded, loc, step)
    if step.n != 1:
        raise loaded.error(loc + ("n",), "a curate step asks `per_combination` samples per combination; "
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
    return PlannedStep(step, i, None, [], produced, names)


def _plan_dim(loaded: LoadedSpec, plan: Plan, shape, loc: tuple, dim: str, values, output: str
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
    cols = {r[0]: r[1] for r in shape.execute(f"DESCRIBE {quote_ident(values.from_)}").fetchall()}
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
