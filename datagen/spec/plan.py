"""The plan: the spec resolved into ordered steps, checked before any model loads.

Checks here: every teacher, source and step a spec names exists; a step reads only sources and earlier steps;
template variables exist in the input's columns; produced columns do not clash with inherited ones; behaviour that
is not built yet is refused. Column names are worked out on an in-memory DuckDB "shape" database, so `query`
sources are checked by DuckDB itself, and no torch or vllm is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import duckdb
import jinja2

from datagen import sources as src
from datagen import templates
from datagen.errors import UserError
from datagen.spec.load import LoadedSpec
from datagen.spec.models import LabelStep, ResponseFormatSpec
from datagen.store.connection import quote_ident

SYSTEM_COLUMNS = ["_id", "_parent_id", "_sample_index", "_teacher", "_finish_reason", "_created_at"]
JSON_TYPES = {"integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN", "string": "VARCHAR"}
NOT_YET = "is not supported yet in this version of datagen"


@dataclass
class PlannedStep:
    spec: Any  # LabelStep, ExpandStep, CurateStep, ...
    index: int
    input: str | None  # None for steps that make their own inputs (expand, curate)
    input_columns: list[str]
    produced: dict[str, str]  # column -> DuckDB type
    teachers: list[str]
    output_is_text: bool = True  # False when the output column is parsed from the reply (a judge's score)
    view_filter: str | None = None  # extra SQL condition on the step's outputs `o` (self: only the kept rows)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def columns(self) -> list[str]:
        inherited = [c for c in self.input_columns if not c.startswith("_")]
        return inherited + list(self.produced) + SYSTEM_COLUMNS


@dataclass
class Plan:
    loaded: LoadedSpec
    source_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source_columns: dict[str, list[str]] = field(default_factory=dict)
    steps: list[PlannedStep] = field(default_factory=list)
    order: list[tuple[str, str]] = field(default_factory=list)  # ("source"|"query"|"step", name) in creation order

    @property
    def spec(self):
        return self.loaded.spec

    def step(self, name: str) -> PlannedStep:
        return next(s for s in self.steps if s.name == name)

    def describe(self) -> str:
        lines = [f"spec {self.spec.name}: store {self.loaded.store_path}"]
        for name, cols in self.source_columns.items():
            size = f"{len(self.source_rows[name])} rows" if name in self.source_rows else "SQL view"
            lines.append(f"  source {name}: {size}; columns {', '.join(c for c in cols if c != '_id')}")
        for st in self.steps:
            s = st.spec
            teacher = ", ".join(st.teachers)
            extra = f", logprobs {s.logprobs}" if s.logprobs else ""
            what = st.input if st.input else _generator_summary(s)
            lines.append(f"  step {st.index + 1} {s.name}: {s.strategy} {what} with {teacher}, n={s.n}{extra} "
                         f"-> {', '.join(st.produced)}")
        if self.spec.train is not None:
            t = self.spec.train
            source = t.input or ("curated" if self.spec.curation is not None else self.spec.steps[-1].name)
            init = f", truncated to {len(t.keep_layers) if t.keep_layers else 'every other'} layers" \
                if t.init == "truncate" else ""
            lines.append(f"  train: {t.objective} of {t.student}{init} on {source} -> {t.output}")
        return "\n".join(lines)


from datagen.spec.teacher_checks import check_teachers  # noqa: E402


def build_plan(loaded: LoadedSpec) -> Plan:
    spec = loaded.spec
    plan = Plan(loaded)
    _refuse_unbuilt(loaded)
    check_teachers(loaded)
    shape = duckdb.connect(":memory:")
    try:
        _load_file_sources(loaded, plan, shape)
        created: set[str] = set(plan.source_rows)
        plan.order += [("source", name) for name in plan.source_rows]
        step_names = [s.name for s in spec.steps]
        _check_unique_names(loaded, step_names)
        for i, step in enumerate(spec.steps):
            loc = ("steps", i)
            for name, where in _reads(step):
                _ensure(loaded, plan, shape, created, name, loc + where, step_names[: i])
            planned = _plan_any_step(loaded, plan, shape, i, step)
            plan.steps.append(planned)
            _create_step_shape(shape, planned)
            created.add(step.name)
            plan.order.append(("step", step.name))
        for name, source in spec.sources.items():
            if source.query is not None and name not in created:
                _ensure(loaded, plan, shape, created, name, ("sources", name, "query"), step_names)
    finally:
        shape.close()
    from curation.validate import check_curation

    check_curation(loaded, plan)
    check_export(loaded, plan)
    from sft.validate import check_train

    check_train(loaded, plan)
    return plan


def _refuse_unbuilt(loaded: LoadedSpec) -> None:
    spec = loaded.spec
    for i, step in enumerate(spec.steps):
        if step.strategy not in ("label", "expand", "curate", "judge", "self"):
            raise loaded.error(("steps", i, "strategy"), f"strategy `{step.strategy}` {NOT_YET}; use `label`")
        if step.strategy in ("judge", "self") and isinstance(step.teacher, list):
            raise loaded.error(("steps", i, "teacher"), "several teachers for one step are for `strategy: label`; "
                                                        "name one teacher")
        demos = getattr(step, "demos", None)
        if step.strategy != "expand" and demos is not None and demos.include_generated:
            raise loaded.error(("steps", i, "demos", "include_generated"),
                               "include_generated only applies to `strategy: expand`; remove it")


def _reads(step) -> list[tuple[str, tuple]]:
    """The sources and earlier steps a step reads, with the key that names each (for error positions)."""
    out = []
    if getattr(step, "input", None) is not None:
        out.append((step.input, ("input",)))
    if getattr(step, "demos", None) is not None:
        out.append((step.demos.from_, ("demos", "from")))
    for dim, values in (getattr(step, "meta", None) or {}).items():
        if not isinstance(values, list):
            out.append((values.from_, ("meta", dim, "from")))
    return out


def _plan_any_step(loaded: LoadedSpec, plan: Plan, shape, i: int, step) -> "PlannedStep":
    if step.strategy in ("judge", "self"):
        from datagen.spec.plan_feedback import plan_feedback_step

        return plan_feedback_step(loaded, plan, shape, i, step)
    if step.strategy == "expand":
        from datagen.strategies.expand_plan import plan_expand

        return plan_expand(loaded, plan, shape, i, step)
    if step.strategy == "curate":
        from datagen.strategies.curate_plan import plan_curate

        return plan_curate(loaded, plan, shape, i, step)
    return _plan_step(loaded, plan, shape, i, step)


def _generator_summary(step) -> str:
    if step.strategy == "expand":
        return f"from {step.demos.from_} (target {step.target}, at most {step.max_rounds} rounds)"
    return f"over {', '.join(step.meta)} ({step.combine})"


def check_export(loaded: LoadedSpec, plan: Plan) -> None:
    """The `export:` block names rows that exist (a step, a source or `curated`) and columns those rows have."""
    export = loaded.spec.export
    if export is None:
        return
    from datagen.export import input_columns  # the export module owns what each input name means

    try:
        columns, from_step = input_columns(plan, export.input, export.format)
    except UserError as exc:
        raise loaded.error(("export", "input"), str(exc)) from None
    for i, col in enumerate(export.columns):
        if col not in columns:
            raise loaded.error(("export", "columns", i), f"`{col}` is not a column of the exported rows; columns: "
                                                         f"{', '.join(columns)}")
    if export.format == "preference" and not {"chosen", "rejected"} <= set(columns):
        from datagen.export import PREFERENCE_NEEDS

        raise loaded.error(("export", "format"), f"{PREFERENCE_NEEDS}; `{export.input or 'the last step'}` has no "
                                                 "pairs")
    if not from_step and "format" in export.model_fields_set:
        raise loaded.error(("export", "format"), f"the `{export.format}` format needs a generation step's rows "
                                                 "(chat turns); these rows come from a source: remove `format` to "
                                                 "export its columns as they are")


def _check_unique_names(loaded: LoadedSpec, step_names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(step_names):
        if name in seen:
            raise loaded.error(("steps", i, "name"), f"step name `{name}` is used twice; names must be unique")
        if name in loaded.spec.sources:
            raise loaded.error(("steps", i, "name"), f"step name `{name}` is also a source name; rename one")
        seen.add(name)


def _load_file_sources(loaded: LoadedSpec, plan: Plan, shape: duckdb.DuckDBPyConnection) -> None:
    for name, source in loaded.spec.sources.items():
        if source.query is not None:
            continue
        path = loaded.resolve_path(source.path) if source.path is not None else None
        if path is not None and not path.exists():
            raise loaded.error(("sources", name, "path"), f"file not found: {path}; fix the path "
                               "(relative paths start at the spec's folder)")
        try:
            rows = src.load_rows(name, path, source.inline, source.limit)
        except UserError as exc:
            raise loaded.error(("sources", name), str(exc)) from None
        if not rows:
            raise loaded.error(("sources", name), "the source has no rows")
        plan.source_rows[name] = rows
        plan.source_columns[name] = src.columns_of(rows)
        create_table_from_rows(shape, name, rows, loaded, ("sources", name))


def create_table_from_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict], loaded: LoadedSpec | None,
                           loc: tuple) -> None:
    import pyarrow as pa

    try:
        arrow = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        message = f"rows have values of mixed types in one column ({exc}); make each column one type"
        raise (loaded.error(loc, message) if loaded else UserError(message)) from None
    arrow = _nulls_to_text(arrow)
    con.register("_arrow_rows", arrow)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {quote_ident(table)} AS SELECT * FROM _arrow_rows")
    finally:
        con.unregister("_arrow_rows")


def _nulls_to_text(arrow):
    import pyarrow as pa

    for i, f in enumerate(arrow.schema):
        if pa.types.is_null(f.type):
            arrow = arrow.set_column(i, pa.field(f.name, pa.string()), arrow.column(i).cast(pa.string()))
    return arrow


def referenced_names(sql: str, names: list[str]) -> list[str]:
    return [n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", sql, flags=re.IGNORECASE)]


def _ensure(loaded: LoadedSpec, plan: Plan, shape: duckdb.DuckDBPyConnection, created: set[str], name: str,
            loc: tuple, earlier_steps: list[str]) -> None:
    """Make sure `name` (a source or an earlier step) exists in the shape database, creating query views on demand."""
    spec = loaded.spec
    if name in created:
        return
    all_steps = [s.name for s in spec.steps]
    if name in all_steps:
        raise loaded.error(loc, f"`{name}` is a step that runs at or after this one; a step can only read sources "
                                "and earlier steps: reorder the steps")
    source = spec.sources.get(name)
    if source is None:
        known = sorted(list(spec.sources) + earlier_steps)
        raise loaded.error(loc, f"`{name}` is not a source or an earlier step; known: {', '.join(known) or 'none'}")
    qloc = ("sources", name, "query")
    for dep in referenced_names(source.query, list(spec.sources) + all_steps):
        if dep == name:
            continue
        if dep in all_steps and dep not in earlier_steps:
            raise loaded.error(qloc, f"the query reads step `{dep}`, which has not run when `{name}` is needed")
        _ensure(loaded, plan, shape, created, dep, qloc, earlier_steps)
    try:
        cols = [r[0] for r in shape.execute(f"DESCRIBE {source.query}").fetchall()]
    except duckdb.Error as exc:
        raise loaded.error(qloc, f"the query does not run: {str(exc).splitlines()[0]}") from None
    sql = query_view_sql(source.query, cols, source.limit)
    shape.execute(f"CREATE VIEW {quote_ident(name)} AS {sql}")
    plan.source_columns[name] = [r[0] for r in shape.execute(f"DESCRIBE {quote_ident(name)}").fetchall()]
    created.add(name)
    plan.order.append(("query", name))


def query_view_sql(query: str, columns: list[str], limit: int | None) -> str:
    """Wrap a query source so every row has an `_id`: kept from the rows it selects, else a hash of the row."""
    base = f"SELECT * FROM ({query}) q" if "_id" in columns else f"SELECT md5(CAST(to_json(q) AS VARCHAR))[:20] AS _id, * FROM ({query}) q"
    return base + (f" LIMIT {int(limit)}" if limit else "")


def step_teachers(loaded: LoadedSpec, loc: tuple, step) -> list[str]:
    """The step's teacher names (one, or a list for multi-teacher label steps), each checked to exist."""
    names = step.teacher if isinstance(step.teacher, list) else [step.teacher]
    if not names:
        raise loaded.error(loc + ("teacher",), "the teacher list is empty; name at least one teacher")
    for j, name in enumerate(names):
        where = loc + ("teacher", j) if isinstance(step.teacher, list) else loc + ("teacher",)
        if name not in loaded.spec.teachers:
            raise loaded.error(where, f"no teacher named `{name}`; teachers: {', '.join(loaded.spec.teachers)}")
        if name in names[:j]:
            raise loaded.error(where, f"teacher `{name}` is listed twice; list each teacher once")
    return names


def _plan_step(loaded: LoadedSpec, plan: Plan, shape, i: int, step: LabelStep) -> PlannedStep:
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    input_cols = _columns(shape, step.input)
    fmt = getattr(step, "response_format", None)
    produced = _produced_columns(loaded, loc, step.output, fmt)
    if getattr(step, "agreement", None) is not None or getattr(step, "vote", None) is not None:
        from datagen.strategies.agreement import plan_agreement

        produced.update(plan_agreement(loaded, loc, step, input_cols, produced, len(names)))
    for col in produced:
        if col in input_cols:
            what = "output" if col == step.output else "response_format.json_schema.properties"
            raise loaded.error(loc + (what,) if what == "output" else loc + ("response_format",),
                               f"produced column `{col}` clashes with a column `{step.input}` already has; "
                               "choose another name")
    if fmt is not None and any(loaded.spec.teachers[t].backend == "transformers" for t in names):
        raise loaded.error(loc + ("response_format",), "structured output needs a `vllm` or `openai` teacher")
    context = set(input_cols) | {"demos"} if (step.demos and step.demos.as_ == "variable") else set(input_cols)
    _check_template(loaded, loc + ("prompt",), step.prompt, context, step.input)
    if step.system:
        _check_template(loaded, loc + ("system",), step.system, context, step.input)
    if step.demos is not None:
        demo_cols = _columns(shape, step.demos.from_)
        for key in ("user", "assistant"):
            col = getattr(step.demos, key)
            if col is not None and col not in demo_cols:
                raise loaded.error(loc + ("demos", key), f"`{col}` is not a column of `{step.demos.from_}`; "
                                                         f"columns: {', '.join(c for c in demo_cols if c != '_id')}")
        if step.demos.as_ == "turns" and step.demos.user is None:
            _check_template(loaded, loc + ("prompt",), step.prompt, set(demo_cols), step.demos.from_)
    return PlannedStep(step, i, step.input, input_cols, produced, names)


def _columns(shape, name: str) -> list[str]:
    return [r[0] for r in shape.execute(f"DESCRIBE {quote_ident(name)}").fetchall()]


def _produced_columns(loaded: LoadedSpec, loc: tuple, output: str, fmt: ResponseFormatSpec | None) -> dict[str, str]:
    produced = {output: "VARCHAR"}
    if fmt is not None:
        for prop, schema in fmt.json_schema["properties"].items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", prop) or prop.startswith("_"):
                raise loaded.error(loc + ("response_format", "json_schema", "properties", prop),
                                   f"property `{prop}` becomes a column: use letters, digits and _ only")
            if prop == output:
                raise loaded.error(loc + ("output",), f"`output: {output}` is also a schema property; rename one")
            kind = schema.get("type") if isinstance(schema, dict) else None
            produced[prop] = JSON_TYPES.get(kind, "JSON") if isinstance(kind, str) else "JSON"
    return produced


def _check_template(loaded: LoadedSpec, loc: tuple, source: str, available: set[str], input_name: str) -> None:
    try:
        names = templates.variables(source)
    except jinja2.TemplateSyntaxError as exc:
        raise loaded.error(loc, f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    missing = sorted(names - available)
    if missing:
        cols = ", ".join(sorted(c for c in available if not c.startswith("_"))) or "none"
        raise loaded.error(loc, f"template uses {', '.join('`' + m + '`' for m in missing)}, which `{input_name}` "
                                f"does not have; its columns: {cols}")


def _create_step_shape(shape, planned: PlannedStep) -> None:
    inherited = ", ".join(quote_ident(c) for c in planned.input_columns if not c.startswith("_"))
    produced = ", ".join(f"NULL::{t} AS {quote_ident(c)}" for c, t in planned.produced.items())
    system = ", ".join(f"NULL::VARCHAR AS {c}" for c in SYSTEM_COLUMNS)
    select = ", ".join(x for x in (inherited, produced, system) if x)
    source = f" FROM {quote_ident(planned.input)}" if planned.input else ""
    shape.execute(f"CREATE TABLE {quote_ident(planned.name)} AS SELECT {select}{source} LIMIT 0")


# the strategies that plan their own steps (datagen/strategies/*_plan.py) use these checks too
columns_of, check_template, produced_columns = _columns, _check_template, _produced_columns
