"""The one interface every strategy implements, each in its own module (see specs/README.md "Adding a strategy").

A strategy module defines the functions of `Strategy` below. The run loop, the planner, status, the card and the
report look the module up in `STRATEGIES` (strategies/__init__.py) by the spec's `strategy` value and never branch
on its name. What a strategy does to the store goes through the store's functions; it writes no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import duckdb

from datagen.spec.load import LoadedSpec
from datagen.spec.plan import Plan, PlannedStep


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
class Volume:
    """At most how many rows a source or step holds: `inputs` inputs with at most `per_input` rows each (the
    samples of one input), for the plan's cost estimate."""

    inputs: int
    per_input: int = 1

    @property
    def rows(self) -> int:
        return self.inputs * self.per_input


@dataclass
class StepEstimate:
    requests: int  # at most this many requests for each of the step's teachers
    volume: Volume  # at most this many rows in the step's view (what a later step reads)
    # some of its prompts, rendered, each standing for an equal share of the requests; empty when its inputs are
    # only known once earlier steps have run
    prompts: list[list[dict[str, str]]] = field(default_factory=list)


ESTIMATE_PROMPTS = 2000  # prompts rendered for an estimate at most; more inputs are sampled evenly


def spread(rows: list, limit: int = ESTIMATE_PROMPTS) -> list:
    """At most `limit` of `rows`, evenly spaced, so an estimate over many inputs stays quick."""
    if len(rows) <= limit:
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


class Strategy(Protocol):
    def plan(self, loaded: LoadedSpec, plan: Plan, shape: duckdb.DuckDBPyConnection, i: int, step
             ) -> PlannedStep:
        """Check the step against the spec and the shapes of what it reads; say what its rows and view will be."""

    def describe(self, st: PlannedStep) -> str:
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
        """The most requests the step can send and rows it can make, given the most rows each relation it reads can
        hold (`volume_of`), with some of its prompts where its inputs are known before the run. `job.con` is a
        scratch store holding the sources (steps are empty there)."""
