"""The plan's types: the spec resolved into ordered steps, and the checks each strategy's planning uses.

`datagen/pipeline/planner.py` builds a Plan; every strategy plans its own steps (`plan` in its module) with the helpers here.
Column names are worked out on an in-memory DuckDB "shape" database, so `query` sources are checked by DuckDB itself
and no torch or vllm is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import jinja2

from datagen import templates
from datagen.spec.load import LoadedSpec
from datagen.spec.models import ResponseFormatSpec, SamplingSpec
from datagen.store.views import SYSTEM_COLUMNS, StepView

JSON_TYPES = {"integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN", "string": "VARCHAR"}
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 512}


@dataclass
class Volume:
    """At most how many rows a source or step holds: `inputs` inputs with at most `per_input` rows each (the
    samples of one input). A strategy's `volume` gives its step's, for the plan (`max_rows`) and the estimate."""

    inputs: int
    per_input: int = 1

    @property
    def rows(self) -> int:
        return self.inputs * self.per_input


@dataclass
class PlannedStep:
    spec: Any  # LabelStep, ExpandStep, MetaStep, JudgeStep, SelfStep
    index: int
    input: str | None  # None for steps that make their own inputs (expand, meta)
    input_columns: list[str]
    produced: dict[str, str]  # column -> DuckDB type
    teachers: list[str]
    view: StepView  # what the step's view shows; the store writes its SQL
    output_is_text: bool = True  # False when the output column is parsed from the reply (a judge's score)
    makes_pairs: bool = False  # the step builds preference pairs (the `pairs` table)
    score_scale: tuple[float, float] | None = None  # the output is a score on this scale (a judge's)
    output_is_conversation: bool = False  # the output column holds a whole conversation, [{role, content}, ...]
    volume: Volume | None = None  # the most rows the step's view can hold, where the plan can tell (its strategy's)
    tools: list[dict] | None = None  # OpenAI-shape schemas of the tools the teacher may call (an agent step's)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def max_rows(self) -> int | None:
        return self.volume.rows if self.volume is not None else None

    @property
    def columns(self) -> list[str]:
        inherited = [c for c in self.input_columns if not c.startswith("_")]
        return inherited + list(self.produced) + SYSTEM_COLUMNS


@dataclass
class Plan:
    loaded: LoadedSpec
    source_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source_tables: dict[str, Any] = field(default_factory=dict)  # the same rows as Arrow tables (what sync_views loads)
    source_columns: dict[str, list[str]] = field(default_factory=dict)
    steps: list[PlannedStep] = field(default_factory=list)
    views: list = field(default_factory=list)  # store views (sources, queries, steps) in creation order
    source_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # what identifies each loaded source
    warnings: list[str] = field(default_factory=list)  # not errors, but likely mistakes (`datagen validate` says)
    # key variables that are not set: `validate` warns; `run` says it only if it needs the teacher (a finished
    # spec re-runs without one)
    unset_keys: list[str] = field(default_factory=list)

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def stage_order(self) -> list[str]:
        """The curation block's stage names in the order they run (empty without one)."""
        cur = self.spec.curation
        return cur.stage_names() if cur is not None else []

    def step(self, name: str) -> PlannedStep:
        return next(s for s in self.steps if s.name == name)

    def volume_of(self, name: str | None) -> Volume | None:
        """The most rows a source or planned step can have, where the plan knows it (a query source: unknown)."""
        if name in self.source_rows:
            return Volume(len(self.source_rows[name]))
        found = [s for s in self.steps if s.name == name]
        return found[0].volume if found else None

    def max_rows(self, name: str | None) -> int | None:
        volume = self.volume_of(name)
        return volume.rows if volume is not None else None


def effective_sampling(teacher_sampling: SamplingSpec, step_sampling: SamplingSpec | None) -> dict:
    """Defaults, then the teacher's sampling, then the step's: the later one wins key by key."""
    merged = dict(DEFAULT_SAMPLING)
    for layer in (teacher_sampling, step_sampling):
        if layer is not None:
            merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
    return merged


def step_view(step, input_name: str | None, input_cols: list[str], produced: dict[str, str],
              output_is_text: bool = True, **decisions) -> StepView:
    """The usual view of a step's rows: its input's columns, then what it produced (the reply text as `output`)."""
    return StepView(step.name, input_name, [c for c in input_cols if not c.startswith("_")], dict(produced),
                    step.output if output_is_text else None, **decisions)


# --- checks the strategies' planning shares -------------------------------------------------------------------


def step_teachers(loaded: LoadedSpec, loc: tuple, step, several: bool = False) -> list[str]:
    """The step's teacher names, each checked to exist; a list of several only where the strategy takes one."""
    if isinstance(step.teacher, list) and not several:
        raise loaded.error(loc + ("teacher",), f"several teachers for one step are for `strategy: label`; name one "
                                               f"teacher for `strategy: {step.strategy}`")
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


def columns_of(shape, name: str) -> list[str]:
    from datagen.store.shape import column_types

    return list(column_types(shape, name))


def produced_columns(loaded: LoadedSpec, loc: tuple, output: str, fmt: ResponseFormatSpec | None) -> dict[str, str]:
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


def check_clash(loaded: LoadedSpec, loc: tuple, produced: dict, input_cols: list[str], input_name: str) -> None:
    for col in produced:
        if col in input_cols:
            raise loaded.error(loc + ("output",), f"produced column `{col}` clashes with a column `{input_name}` "
                                                  "already has; choose another `output`")


def check_template(loaded: LoadedSpec, loc: tuple, source: str, available: set[str], input_name: str) -> None:
    try:
        names = templates.variables(source)
    except jinja2.TemplateSyntaxError as exc:
        raise loaded.error(loc, f"template syntax error on its line {exc.lineno}: {exc.message}") from None
    missing = sorted(names - available)
    if missing:
        cols = ", ".join(sorted(c for c in available if not c.startswith("_"))) or "none"
        raise loaded.error(loc, f"template uses {', '.join('`' + m + '`' for m in missing)}, which `{input_name}` "
                                f"does not have; its columns: {cols}")


def refuse_include_generated(loaded: LoadedSpec, loc: tuple, demos) -> None:
    if demos is not None and demos.include_generated:
        raise loaded.error(loc + ("demos", "include_generated"),
                           "include_generated only applies to `strategy: expand`; remove it")
