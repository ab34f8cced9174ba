"""The run loop: for each step, ask its strategy for rounds of requests, skip the finished ones, stream the rest
through the teacher and commit as samples arrive; then let the strategy derive what it derives (pairs, votes).

A killed run, re-run, picks up where it stopped; a finished spec re-runs without loading a model. The loop never
branches on a strategy's name: everything step-specific is in the strategy's module (strategies/base.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, UTC
from collections.abc import Callable

import duckdb

from datagen.pipeline.spendcap import SpendCap
from datagen.pipeline.cost import rates_of, usd
from datagen.errors import RunFailed, as_interrupt
from datagen.keys import canonical
from datagen.spec.models import HTTP_BACKENDS
from datagen.spec.plan import Plan, PlannedStep, effective_sampling
from datagen.store import batches, reads, runs, stats
from datagen.store.writes import insert_pending
from datagen.pipeline.stream import Counts, options_for, stream_into_store
from datagen.strategies import strategy_of
from datagen.strategies.base import Job, Round, TeacherSetup
from datagen.teachers.base import GenOptions, Sampling
from datagen.templates import TemplateFailed

MIN_SAMPLES_FOR_RATE = 20  # below this many finished samples a failure rate says little


@dataclass
class StepSummary:
    step: str
    planned: int = 0
    cached: int = 0
    generated: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0
    pace: str | None = None  # an adaptive HTTP teacher's concurrency and learned rate, where it had to adapt
    kept_failed: int = 0  # requests that failed by their own fault on an earlier run, left failed (no --retry-failed)
    # what an HTTP teacher achieved while it streamed this step: requests in flight on average, replies a second, and
    # 429s (teachers/ratelimit.Meter); None for in-process teachers
    concurrency: float | None = None
    requests_per_s: float | None = None
    rate_limited: int = 0


@dataclass
class RunSummary:
    store: str
    steps: list[StepSummary] = field(default_factory=list)
    seconds: float = 0.0
    models_loaded: list[str] = field(default_factory=list)
    funnel: list[dict] = field(default_factory=list)  # the curation block's stages, when the spec has one


Progress = Callable[[str, int, int, int], None]  # (step, samples done, samples planned, output tokens so far)


def run_steps(con: duckdb.DuckDBPyConnection, plan: Plan, progress: Progress | None = None,
              log: Callable[[str], None] = print, max_usd: float | None = None, ray: bool = False,
              retry_failed: bool = False) -> RunSummary:
    """Generate every step of the plan into the store (its views already synced), spending at most `max_usd` in all
    (what the store has spent included); with `ray`, in-process teachers run as replicas on the Ray cluster this
    process has joined. A request that failed by its own fault on an earlier run (a request fault) is asked again
    only with `retry_failed`; one that failed by the provider's is asked again in any case."""
    start = time.monotonic()
    cap = SpendCap(max_usd, stats.spent(con)) if max_usd is not None else None
    summary = RunSummary(store=str(plan.loaded.store_path))
    teachers = Teachers(con, plan, ray, log)
    started = datetime.now(UTC).replace(tzinfo=None)
    runs.start(con, started, os.getpid(), plan.spec.model_dump_json(by_alias=True))
    status = "failed"
    try:
        for st in plan.steps:
            summary.steps.append(run_step(con, plan, st, teachers, progress, log, cap, retry_failed))
        batches.close_unplanned(con)
        status = "done"
    except BaseException as exc:
        interrupt = as_interrupt(exc)  # Ctrl-C, SIGTERM, or either while DuckDB ran a query
        if interrupt is None:
            raise
        status = "interrupted"
        raise interrupt from None
    finally:
        summary.models_loaded = list(teachers.loaded)
        teachers.close()
        summary.seconds = time.monotonic() - start
        runs.finish(con, started, status, canonical([{k: v for k, v in s.__dict__.items() if not k.startswith("_")}
                                                     for s in summary.steps]))
    return summary


def teacher_setups(plan: Plan, st: PlannedStep) -> list[TeacherSetup]:
    """Each teacher of the step with its identity and the step's effective sampling on it (both part of every key)."""
    from datagen.extra_body import keyed, merge
    from datagen.teachers import teacher_identity

    out = []
    for name in st.teachers:
        spec = plan.spec.teachers[name]
        identity = teacher_identity(spec, plan.loaded.dir)
        if st.spec.extra_body:  # the request body the step sends decides its outputs (keyed without credentials)
            identity["extra_body"] = keyed(merge(getattr(spec, "extra_body", None), st.spec.extra_body))
        out.append(TeacherSetup(name, identity, effective_sampling(spec.sampling, st.spec.sampling)))
    return out


def run_step(con: duckdb.DuckDBPyConnection, plan: Plan, st: PlannedStep, teachers: Teachers,
             progress: Progress | None, log: Callable[[str], None], cap: SpendCap | None = None,
             retry_failed: bool = False) -> StepSummary:
    strategy = strategy_of(st.spec)
    job = Job(con, plan, st, teacher_setups(plan, st), log)
    summary = StepSummary(st.name)
    keys: list[str] = []
    rounds = strategy.rounds(job)
    try:
        for rnd in rounds:
            keys += [r.key for r in rnd.requests]
            insert_pending(con, st.name, rnd.requests, keys)
            run_round(con, plan, job, rnd, teachers, summary, progress, log, cap, retry_failed)
    except TemplateFailed as exc:
        raise plan.loaded.error(("steps", st.index), str(exc)) from None
    finally:
        rounds.close()
    if summary.kept_failed:
        log(f"step {st.name}: {summary.kept_failed} requests failed by their own fault on an earlier run (a 400, a "
            "reply that did not parse, a refusal) and were not asked again; `datagen run --retry-failed` asks again")
    if summary.generated or summary.failed or summary.kept_failed:
        check_failure_rate(st.spec, summary, final=True)
    strategy.finish(job)
    return summary


def run_round(con, plan: Plan, job: Job, rnd: Round, teachers: Teachers, summary: StepSummary,
              progress: Progress | None, log: Callable[[str], None], cap: SpendCap | None = None,
              retry_failed: bool = False) -> None:
    st = job.st
    keys = [r.key for r in rnd.requests]
    # a round whose failures are final (an expansion's) never asks again; else a provider fault is asked again, and
    # a request fault (it would fail the same way) only under --retry-failed
    finished = reads.finished_keys(con, keys, failed_too=not rnd.retry_failed, request_faults_too=not retry_failed)
    if rnd.retry_failed and not retry_failed:
        summary.kept_failed += len(finished - reads.finished_keys(con, keys, failed_too=False))
    todo = [r for r in rnd.requests if r.key not in finished]
    summary.planned += len(rnd.requests)
    summary.cached += len(rnd.requests) - len(todo)
    report = _reporter(summary, progress)
    report()
    strategy = strategy_of(st.spec)
    for setup in job.teachers:
        mine = [r for r in todo if r.teacher == setup.name]
        if not mine:
            continue
        teacher = teachers.get(setup.name)
        options = options_for(st.spec, setup.sampling, strategy.json_schema(st.spec), st.tools)
        counts = Counts()

        def parse(req, sample):
            return strategy.parse(st.spec, sample.text, req, sample)

        meter = getattr(teacher, "meter", None)  # an HTTP teacher's (teachers/ratelimit.Meter)
        before = meter.snapshot() if meter is not None else None

        def committed(counts=counts, meter=meter):
            _add(summary, counts)
            report(meter.live if meter is not None else None)
            check_failure_rate(st.spec, summary)

        try:
            stream_into_store(con, teacher, setup.name, mine, options, parse, counts, on_commit=committed,
                     rates=rates_of(plan.spec.teachers[setup.name]), cap=cap)
        finally:
            _add(summary, counts)
            if meter is not None:
                _add_achieved(summary, before, meter.snapshot())
        pace = getattr(teacher, "pace", lambda: None)()
        if pace and pace != summary.pace:
            summary.pace = pace
            log(f"step {st.name}: teacher {setup.name}: {pace}")


def _add(summary: StepSummary, counts: Counts) -> None:
    """Move what a stream counted so far into the step's summary (and zero it, so nothing counts twice)."""
    for name in ("generated", "failed", "prompt_tokens", "completion_tokens", "seconds", "cost_usd"):
        setattr(summary, name, getattr(summary, name) + getattr(counts, name))
        setattr(counts, name, type(getattr(counts, name))())


def _add_achieved(summary: StepSummary, before: tuple, after: tuple) -> None:
    """Add what an HTTP teacher achieved in one stream to the step's figures (over every stream of the step)."""
    got = [b - a for a, b in zip(before, after)]
    total = [x + y for x, y in zip(getattr(summary, "_achieved", [0.0, 0.0, 0, 0]), got)]
    summary._achieved = total  # (request-seconds in flight, seconds streaming, replies, 429s); not stored itself
    busy, open_s, replies, limited = total
    if open_s > 0:
        summary.concurrency, summary.requests_per_s = round(busy / open_s, 1), round(replies / open_s, 2)
    summary.rate_limited = limited


def _reporter(summary: StepSummary, progress: Progress | None):
    """`report(live)`: the step's progress; a callback that takes a `pace` keyword also gets `live()`, an HTTP
    teacher's concurrency and rate now (the progress line shows them)."""
    import inspect

    try:
        takes_pace = progress is not None and "pace" in inspect.signature(progress).parameters
    except (TypeError, ValueError):  # a callable without a signature
        takes_pace = False

    def report(live: Callable[[], str] | None = None) -> None:
        if not progress:
            return
        done = summary.cached + summary.generated + summary.failed
        if takes_pace:
            progress(summary.step, done, summary.planned, summary.completion_tokens, pace=live() if live else None)
        else:
            progress(summary.step, done, summary.planned, summary.completion_tokens)
    return report


class Teachers:
    """The run's teachers, each made when a step first has work for it, all closed at the end."""

    def __init__(self, con: duckdb.DuckDBPyConnection, plan: Plan, ray: bool, log: Callable[[str], None]):
        self.con, self.plan, self.ray, self.log = con, plan, ray, log
        self.loaded: dict[str, object] = {}

    def get(self, name: str, spec=None):
        """The teacher `name` of the spec, or one given by its `spec` (a model named outside `teachers:`)."""
        if name not in self.loaded:
            from datagen.teachers import make_teacher, start_message

            spec = spec or self.plan.spec.teachers[name]
            ray = self.ray and spec.backend not in HTTP_BACKENDS
            where = f", {spec.replicas} replica{'s' if spec.replicas > 1 else ''} on Ray" if ray else ""
            self.log(start_message(name, spec, where))
            started = time.monotonic()
            # a batch-mode teacher records its batches in the store before it waits on them
            journal = batches.StoreJournal(self.con, name, self.log)
            still_out = batches.open_batches(self.con, name)
            if still_out and not (spec.backend in HTTP_BACKENDS and spec.batch.enabled):
                self.log(f"warning: teacher {name} has {len(still_out)} batches still open from an earlier run; "
                         "their requests are sent again now, and paid again; set `batch.enabled: true` to collect "
                         "them instead")
            from datagen.pipeline.planner import logprobs_mode_of

            teacher = make_teacher(name, spec, self.plan.loaded.dir, self.plan.spec.seed, journal=journal, ray=ray,
                                   logprobs_mode=logprobs_mode_of(self.plan, name))
            self.loaded[name] = teacher
            if teacher.start():  # loads the model now, so the step's progress and seconds count generation only
                self.log(f"teacher {name} ready in {time.monotonic() - started:.0f} s")
        return self.loaded[name]

    def close(self) -> None:
        for teacher in self.loaded.values():
            teacher.close()


def generate_requests(con: duckdb.DuckDBPyConnection, plan: Plan, what: str, teacher_name: str, teacher_spec,
                      requests: list, sampling: dict, progress: Progress | None = None,
                      log: Callable[[str], None] = print, max_usd: float | None = None,
                      logprobs: int | None = None) -> StepSummary:
    """Requests made outside the spec's steps (curation's student probe, on-policy training's samples and scores,
    under the pseudo-step `what`), generated as a step's are: finished ones are not sent again (a failed one is),
    each sample is costed at the teacher's price and held under `max_usd` with everything the store has spent,
    progress is reported, and a kill loses only what was not committed. Its summary joins the run's. With
    `logprobs`, the teacher's top k at each token are kept (and scored, for requests with a `continuation`)."""
    summary = StepSummary(what)
    keys = [r.key for r in requests]
    finished = reads.finished_keys(con, keys, failed_too=False)
    todo = [r for r in requests if r.key not in finished]
    summary.planned, summary.cached = len(requests), len(requests) - len(todo)
    if not todo:
        return summary
    insert_pending(con, what, todo, None)
    report = _reporter(summary, progress)
    report()
    cap = SpendCap(max_usd, stats.spent(con)) if max_usd is not None else None
    teachers = Teachers(con, plan, False, log)
    counts = Counts()

    def committed() -> None:
        _add(summary, counts)
        report()

    try:
        stream_into_store(con, teachers.get(teacher_name, teacher_spec), teacher_name, todo,
                          GenOptions(Sampling(**sampling), logprobs=logprobs), lambda req, sample: ({}, None), counts,
                          on_commit=committed, rates=rates_of(teacher_spec), cap=cap)
    finally:
        _add(summary, counts)
        teachers.close()
    return summary


def cancel_batches(con: duckdb.DuckDBPyConnection, plan: Plan, log: Callable[[str], None] = print) -> list[tuple]:
    """Ask the provider to cancel every open batch of the spec's batch-mode teachers: (teacher, batch id, status).
    The next run reads what they finished and sends the rest again."""
    from datagen.teachers import make_teacher

    out = []
    for name, spec in plan.spec.teachers.items():
        if spec.backend not in HTTP_BACKENDS or not batches.open_batches(con, name):
            continue
        spec = spec.model_copy(update={"batch": spec.batch.model_copy(update={"enabled": True})})
        teacher = make_teacher(name, spec, plan.loaded.dir, plan.spec.seed, batches.StoreJournal(con, name, log))
        out += [(name, batch_id, status) for batch_id, status in teacher.cancel_open()]
    return out


def check_failure_rate(step, summary: StepSummary, final: bool = False) -> None:
    """Stop early once enough samples show the failure rate is over the step's `max_failure_rate`; at the step's
    end, always check, counting the request faults an earlier run left failed (over every finished request then,
    so a re-run of a step that failed does not pass by not asking again)."""
    failed, attempted = summary.failed, summary.generated + summary.failed
    if final and summary.kept_failed:
        failed, attempted = failed + summary.kept_failed, attempted + summary.cached
    if attempted == 0 or (attempted < MIN_SAMPLES_FOR_RATE and not final):
        return
    rate = failed / attempted
    if rate > step.max_failure_rate:
        kept = (f" ({summary.kept_failed} failed by their own fault on an earlier run: fix the cause, then "
                "`datagen run --retry-failed`)") if final and summary.kept_failed else ""
        raise RunFailed(
            f"step {step.name}: {failed} of {attempted} samples failed ({rate:.0%}){kept}, over its "
            f"max_failure_rate of {step.max_failure_rate:.0%}; see `datagen status SPEC` or `datagen query SPEC "
            f"\"select error, count(*) from requests where status = 'failed' group by 1\"`, fix the cause and re-run "
            "(finished work is kept)"
        )


def describe_summary(summary: RunSummary) -> list[list[str]]:
    rows = []
    for s in summary.steps:
        rows.append([s.step, str(s.planned), str(s.cached), str(s.generated), str(s.failed),
                     str(s.prompt_tokens), str(s.completion_tokens), f"{s.seconds:.1f}", usd(s.cost_usd)])
    return rows
