"""The one interface every strategy implements, each in its own module (CONTRIBUTING.md, "Adding a strategy").

A strategy module defines `STEP` (its step's pydantic model) and the functions of `Strategy` below;
`strategies/__init__.py` registers it with one `add(module)` line, which checks that nothing is missing and
registers `STEP` with the spec language (`spec.models.register_step`: the spec's union of step models and its
unknown-strategy message come from that registry). The run loop, the planner, the estimate, status, the card, the
report and training look the module up by the spec's `strategy` value and never branch on its name or read a
strategy's own fields: what a step reads, how many rows it makes, its prompt templates and its card notes all come
from here. What a strategy does to the store goes through the store's functions; it writes no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from collections.abc import Callable, Iterator

import duckdb

from datagen.spec.load import LoadedSpec
from datagen.spec.plan import Plan, PlannedStep, Volume

__all__ = ["Job", "PlannedRequest", "Round", "RowPrompt", "StepEstimate", "Strategy", "TeacherSetup", "Volume",
           "input_and_demos", "spread"]


@dataclass
class PlannedRequest:
    key: str
    step: str
    parent_id: str | None
    sample_index: int
    messages: list[dict[str, str]]
    teacher: str
    lineage: list[tuple[str, str]] = field(default_factory=list)  # (parent_id, role) besides the input
    fields: dict[str, Any] = field(default_factory=dict)  # produced columns known before the reply (meta values)
    continuation: str | None = None  # text the teacher scores after the messages instead of sampling (score)


@dataclass
class Round:
    """Requests the loop generates (skipping those already answered) and commits before asking for more."""

    requests: list[PlannedRequest]
    retry_failed: bool = True  # False: a failed request is final (expansion: a retry could change what it accepted)


@dataclass
class TeacherSetup:
    name: str
    identity: dict  # what about the teacher determines its outputs (part of every key)
    sampling: dict  # the step's effective sampling on this teacher (part of every key)


@dataclass
class Job:
    """What a strategy sees while its step runs."""

    con: duckdb.DuckDBPyConnection
    plan: Plan
    st: PlannedStep
    teachers: list[TeacherSetup]
    log: Callable[[str], None]

    @property
    def step(self):
        return self.st.spec

    @property
    def seed(self) -> int:
        return self.plan.spec.seed


@dataclass
class StepEstimate:
    requests: int  # at most this many requests for each of the step's teachers
    # some of its prompts, rendered, each standing for an equal share of the requests; empty when its inputs are
    # only known once earlier steps have run
    prompts: list[list[dict[str, str]]] = field(default_factory=list)


ESTIMATE_PROMPTS = 2000  # prompts rendered for an estimate at most; more inputs are sampled evenly


def spread(rows: list, limit: int = ESTIMATE_PROMPTS) -> list:
    """At most `limit` of `rows`, evenly spaced, so an estimate over many inputs stays quick."""
    if len(rows) <= limit:
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


@dataclass
class RowPrompt:
    """How a step puts one input row to its teacher, for rendering other rows the same way (`train.eval.source`)."""

    system: str | None
    prompt: str
    demos_as: str | None  # "turns", "variable", or None without demos


def input_and_demos(step) -> list[tuple[str, tuple]]:
    """`reads_from` of a step with an `input` and optional `demos` (label, self)."""
    out = [(step.input, ("input",))]
    if getattr(step, "demos", None) is not None:
        out.append((step.demos.from_, ("demos", "from")))
    return out


class Strategy(Protocol):
    STEP: type  # the step's pydantic model (a subclass of spec.models.StepBase with `strategy: Literal[...]`)

    def reads_from(self, step) -> list[tuple[str, tuple]]:
        """The sources and earlier steps the step reads, each with the key path under the step that names it (for
        error positions); the one under ("input",) is the step's input, what `run --limit` cuts."""

    def volume(self, step, teachers: int, volume_of: Callable[[str], Volume | None]) -> Volume | None:
        """At most how many rows the step's view holds, given the most each relation it reads holds (`volume_of`;
        None where unknown) and its number of teachers. The plan (`max_rows`) and the estimate both use it."""

    def template_texts(self, step) -> list[str]:
        """The step's own template texts (system, prompt, rubric...), for estimating prompts not known yet."""

    def coverage_columns(self, step) -> dict[str, list[str]]:
        """Columns whose values the step spreads on purpose (meta dimensions), each with the values the spec lists
        (empty where only the rows know them): the report charts their coverage."""

    def row_prompt(self, step) -> RowPrompt | None:
        """How it renders an input row, where it does (None: it makes its own inputs or reads other steps' rows)."""

    def plan(self, loaded: LoadedSpec, plan: Plan, shape: duckdb.DuckDBPyConnection, i: int, step
             ) -> PlannedStep:
        """Check the step against the spec and the shapes of what it reads; say what its rows and view will be."""

    def plan_line(self, st: PlannedStep) -> str:
        """What the step reads, for the plan's line about it ("problems", "from seeds (target 300, ...)")."""

    def rounds(self, job: Job) -> Iterator[Round]:
        """The step's requests, a round at a time. The loop generates and commits each round before it asks for
        the next, so a strategy can look at a round's replies (in the store) before deciding on more."""

    def json_schema(self, step) -> dict | None:
        """The response schema the teacher is constrained to, if any (part of every key)."""

    def parse(self, step, text: str, req: PlannedRequest, sample=None) -> tuple[dict | None, str | None]:
        """A reply's produced columns besides the output text, or the reason it is unusable (a failed request).
        `sample` is the teacher's whole Sample (its `reasoning`, when the step keeps a trace)."""

    def finish(self, job: Job) -> None:
        """What the step derives once its rows are all in (pairs, votes, kept samples), recomputed from the store."""

    def status_lines(self, con: duckdb.DuckDBPyConnection, st: PlannedStep) -> list[str]:
        """Lines `datagen status` prints under the step."""

    def card_notes(self, step) -> list[str]:
        """A few words each about how the step made its rows, for the dataset card."""

    def estimate(self, job: Job, volume_of: Callable[[str], Volume]) -> StepEstimate:
        """The most requests the step can send for each teacher, given the most rows each relation it reads can hold
        (`volume_of`), with some of its prompts where its inputs are known before the run. `job.con` is a scratch
        store holding the sources (steps are empty there)."""


# what `add` checks a strategy module defines (strategies/__init__.py); the test suite checks this list is complete
INTERFACE = ("STEP", "reads_from", "volume", "template_texts", "coverage_columns", "row_prompt", "plan", "plan_line",
             "rounds", "json_schema", "parse", "finish", "status_lines", "card_notes", "estimate")
