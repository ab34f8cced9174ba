"""The run loop: plan, then for each step build its requests, skip the finished ones, generate the rest in batches,
and commit each batch. A killed run, re-run, picks up where it stopped; a finished spec re-runs without loading a model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import duckdb

from datagen.errors import RunFailed
from datagen.keys import canonical
from datagen.spec.load import LoadedSpec
from datagen.spec.models import SamplingSpec
from datagen.spec.plan import Plan, PlannedStep, build_plan
from datagen.store.connection import arrow_table, open_store, quote_ident
from datagen.store.views import sync_sources
from datagen.store.writes import BatchResult, insert_pending, write_batch
from datagen.strategies import judge, label, pairs, self_consistency
from datagen.teachers.base import GenOptions, GenRequest, Interrupted, Sampling
from datagen.templates import TemplateFailed

DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 512}
MIN_SAMPLES_FOR_BUDGET = 20  # below this many finished samples a failure rate says little


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


@dataclass
class RunSummary:
    store: str
    steps: list[StepSummary] = field(default_factory=list)
    seconds: float = 0.0
    models_loaded: list[str] = field(default_factory=list)


Progress = Callable[[str, int, int], None]  # (step, done, total)


def effective_sampling(teacher_sampling: SamplingSpec, step_sampling: SamplingSpec | None) -> dict:
    """Defaults, then the teacher's sampling, then the step's: the later one wins key by key."""
    merged = dict(DEFAULT_SAMPLING)
    for layer in (teacher_sampling, step_sampling):
        if layer is not None:
            merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
    return merged


def batch_size(teacher_spec) -> int:
    if teacher_spec.backend == "vllm":
        return 256  # the engine schedules the whole batch; bigger batches only delay the next commit
    if teacher_spec.backend == "transformers":
        return teacher_spec.batch_size * 4
    return teacher_spec.max_concurrency * 4


def run(loaded: LoadedSpec, progress: Progress | None = None, log: Callable[[str], None] = print) -> RunSummary:
    plan = build_plan(loaded)
    start = time.monotonic()
    con = open_store(loaded.store_path)
    summary = RunSummary(store=str(loaded.store_path))
    teachers: dict[str, object] = {}
    run_started = datetime.now(timezone.utc).replace(tzinfo=None)
    status = "failed"
    try:
        sync_sources(con, plan)
        con.execute("INSERT INTO _runs (started_at, status, pid, spec) VALUES (?, 'running', ?, ?)",
                    [run_started, os.getpid(), loaded.spec.model_dump_json(by_alias=True)])
        for st in plan.steps:
            summary.steps.append(run_step(con, plan, st, teachers, progress, log))
            finish_step(con, st, log)
        if loaded.spec.curation is not None:
            from curation.run import run_curation

            run_curation(con, loaded, plan, log=log)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        summary.models_loaded = list(teachers)
        for teacher in teachers.values():
            teacher.close()
        summary.seconds = time.monotonic() - start
        try:
            con.execute("UPDATE _runs SET finished_at = current_timestamp, status = ?, summary = ? WHERE started_at = ?",
                        [status, canonical([s.__dict__ for s in summary.steps]), run_started])
        finally:
            con.close()
    return summary


def run_step(con: duckdb.DuckDBPyConnection, plan: Plan, st: PlannedStep, teachers: dict, progress: Progress | None,
             log: Callable[[str], None]) -> StepSummary:
    if st.spec.strategy == "expand":
        from datagen.strategies import expand

        return expand.run_step(con, plan, st, teachers, progress, log)
    if st.spec.strategy == "curate":
        from datagen.strategies import curate

        return curate.run_step(con, plan, st, teachers, progress, log)
    spec = plan.spec
    step = st.spec
    rows = fetch_rows(con, st.input)
    demo_pool = fetch_rows(con, step.demos.from_) if getattr(step, "demos", None) else None
    per_teacher = []
    try:
        for teacher_name in st.teachers:
            # with several teachers, the name is part of the key: two teachers on one model still get their own rows
            extra = {"teacher": teacher_name} if len(st.teachers) > 1 else None
            sampling, identity = teacher_setup(plan, teacher_name, step)
            if step.strategy == "judge":
                reqs = judge.build_requests(con, plan, st, rows, teacher_name, identity, sampling)
            else:
                reqs = label.build_requests(step, rows, demo_pool, spec.seed, teacher_name, identity, sampling,
                                            key_extra=extra)
            per_teacher.append((teacher_name, reqs))
    except TemplateFailed as exc:
        raise plan.loaded.error(("steps", st.index), str(exc)) from None
    requests = [r for _, reqs in per_teacher for r in reqs]
    insert_pending(con, step.name, requests, [r.key for r in requests])
    done = {k for (k,) in con.execute("SELECT key FROM requests WHERE step = ? AND status = 'done'", [step.name]).fetchall()}
    todo = sum(1 for r in requests if r.key not in done)
    summary = StepSummary(step.name, planned=len(requests), cached=len(requests) - todo)
    if progress:
        progress(step.name, summary.cached, summary.planned)
    for teacher_name, reqs in per_teacher:
        generate(con, plan, st, teacher_name, [r for r in reqs if r.key not in done], teachers, summary, progress,
                 log)
    if todo:
        check_budget(step, summary, final=True)
    return summary


def teacher_setup(plan: Plan, teacher_name: str, step) -> tuple[dict, dict]:
    """The effective sampling of `step` on this teacher, and the teacher's identity (both part of every key)."""
    from datagen.teachers import teacher_identity

    teacher_spec = plan.spec.teachers[teacher_name]
    return effective_sampling(teacher_spec.sampling, step.sampling), teacher_identity(teacher_spec, plan.loaded.dir)


def generate(con: duckdb.DuckDBPyConnection, plan: Plan, st: PlannedStep, teacher_name: str, todo: list,
             teachers: dict, summary: StepSummary, progress: Progress | None, log: Callable[[str], None]) -> None:
    """Send `todo` (requests of one step and one teacher) in batches; each batch is written as one transaction."""
    if not todo:
        return
    spec = plan.spec
    step = st.spec
    teacher_spec = spec.teachers[teacher_name]
    if teacher_name not in teachers:
        from datagen.teachers import make_teacher

        log(f"loading teacher {teacher_name} ({teacher_spec.backend}: {teacher_spec.model})")
        teachers[teacher_name] = make_teacher(teacher_name, teacher_spec, plan.loaded.dir, spec.seed)
    teacher = teachers[teacher_name]
    fmt = getattr(step, "response_format", None)
    schema = judge.json_schema(step) if step.strategy == "judge" else fmt.json_schema if fmt else None
    options = GenOptions(Sampling(**effective_sampling(teacher_spec.sampling, step.sampling)),
                         logprobs=step.logprobs, json_schema=schema)
    groups = group_by_prompt(todo)
    size = batch_size(teacher_spec)
    start = time.monotonic()
    for i in range(0, len(groups), size):
        batch = groups[i: i + size]
        try:
            samples = teacher.generate([g for g, _ in batch], options)
        except Interrupted as exc:  # Ctrl-C: keep the samples that finished, then stop
            record_batch(con, step, batch, exc.partial, teacher_name, summary)
            raise
        record_batch(con, step, batch, samples, teacher_name, summary)
        if progress:
            progress(step.name, summary.cached + summary.generated + summary.failed, summary.planned)
        check_budget(step, summary)
    summary.seconds += time.monotonic() - start


def record_batch(con, step, batch, samples, teacher_name: str, summary: StepSummary) -> None:
    """Write one batch in one transaction; a sample that is None (cut off by Ctrl-C) stays pending."""
    result = BatchResult()
    for (gen, reqs), got in zip(batch, samples):
        for req, sample in zip(reqs, got):
            if sample is not None:
                record_sample(result, step, req, sample, teacher_name, summary)
    if result.requests:
        write_batch(con, result)


def record_sample(result: BatchResult, step, req, sample, teacher_name: str, summary: StepSummary) -> None:
    summary.prompt_tokens += sample.prompt_tokens or 0
    summary.completion_tokens += sample.completion_tokens or 0
    if sample.error is not None:
        summary.failed += 1
        result.add_failure(req.key, sample.error, sample)
        return
    if step.strategy == "judge":
        fields, error = judge.parse_reply(step, sample.text, req)
    elif step.strategy == "self":
        fields, error = self_consistency.parse_reply(step, sample.text)
    else:
        fields, error = label.parse_reply(step, sample.text)
    if error is not None:
        summary.failed += 1
        result.add_failure(req.key, error, sample)
        return
    summary.generated += 1
    result.add_row(req, sample, {**req.fields, **fields}, teacher_name)


def finish_step(con: duckdb.DuckDBPyConnection, st: PlannedStep, log: Callable[[str], None]) -> None:
    """What a step derives from its rows once they are all in: a judge's pairs, a self step's kept samples."""
    if pairs.wants_pairs(st.spec):
        made, dropped = pairs.build_and_store(con, st)
        log(f"step {st.name}: {made} preference pairs ({dropped} candidates without a pair, see decisions)")
    elif st.spec.strategy == "self":
        kept, dropped = self_consistency.decide(con, st)
        log(f"step {st.name}: kept {kept} samples, dropped {dropped} (keep: {st.spec.keep}; see decisions)")
    elif getattr(st.spec, "agreement", None) is not None:
        from datagen.strategies import agreement

        agreement.decide(con, st)


def check_budget(step, summary: StepSummary, final: bool = False) -> None:
    """Stop early once enough samples show the failure rate is over budget; at the step's end, always check."""
    attempted = summary.generated + summary.failed
    if attempted == 0 or (attempted < MIN_SAMPLES_FOR_BUDGET and not final):
        return
    rate = summary.failed / attempted
    if rate > step.max_failure_rate:
        raise RunFailed(
            f"step {step.name}: {summary.failed} of {attempted} samples failed ({rate:.0%}), over its "
            f"max_failure_rate of {step.max_failure_rate:.0%}; see `datagen query SPEC \"select error, count(*) "
            f"from requests where status = 'failed' group by 1\"`, fix the cause and re-run (finished work is kept)"
        )


def group_by_prompt(requests: list[label.PlannedRequest]) -> list[tuple[GenRequest, list[label.PlannedRequest]]]:
    """One GenRequest per prompt with all its missing samples, ordered so shared prefixes run together."""
    groups: dict[str, list[label.PlannedRequest]] = {}
    for r in requests:
        groups.setdefault(canonical([r.parent_id, r.messages]), []).append(r)
    ordered = sorted(groups.values(), key=lambda rs: canonical(rs[0].messages))
    return [(GenRequest(rs[0].messages, [r.key for r in rs], [r.sample_index for r in rs]), rs) for rs in ordered]


def fetch_rows(con: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    return arrow_table(con.sql(f"SELECT * FROM {quote_ident(name)}")).to_pylist()


def describe_summary(summary: RunSummary) -> list[list[str]]:
    rows = []
    for s in summary.steps:
        rows.append([s.step, str(s.planned), str(s.cached), str(s.generated), str(s.failed),
                     str(s.prompt_tokens), str(s.completion_tokens), f"{s.seconds:.1f}"])
    return rows
