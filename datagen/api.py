"""The library's front door (specs/python.md): what the `datagen` command does, as functions that return structured
results instead of printing. The CLI is a thin layer over these.

`spec` is a path to a spec file, a dict with the YAML's shape (relative paths resolve against the working
directory; errors name the key path, without a line), or an already loaded spec. Every function checks the whole
spec first. Every function also works inside a running event loop (a notebook, an async application): the HTTP
teacher runs an event loop of its own, which cannot run in a thread that already has one, so there the work runs in
a worker thread while the caller waits (see `_loop_safe`).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from collections.abc import Callable

from datagen.errors import UserError
from datagen.spec.load import LoadedSpec
from datagen.spec.plan import Plan

if TYPE_CHECKING:
    import pyarrow

Log = Callable[[str], None]
SpecLike = Union[str, "os.PathLike[str]", dict, LoadedSpec]

_logger = logging.getLogger("datagen")


def _default_log(message: str) -> None:
    _logger.info(message)


def _loop_safe(fn):
    """Run `fn` here, or, when this thread runs an event loop, in a worker thread (see datagen/pipeline/threads.py)."""
    from datagen.pipeline.threads import outside_event_loop

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return outside_event_loop(fn, *args, **kwargs)

    return wrapper


def open_spec(spec: SpecLike, limit: int | None = None) -> LoadedSpec:
    """A loaded, model-validated spec (the plan's checks come later, in `plan`)."""
    import curation.filters  # noqa: F401  every registered filter (curation.filters.add), before the spec is read
    import datagen.strategies  # noqa: F401  registers every strategy's step model before the spec is read
    from datagen.spec.load import load_spec, load_spec_data

    if isinstance(spec, LoadedSpec):
        loaded = spec
    elif isinstance(spec, dict):
        loaded = load_spec_data(spec)
    elif isinstance(spec, (str, os.PathLike)):
        loaded = load_spec(Path(spec))
    else:
        raise UserError(f"a spec is a path to a YAML file, a dict or a loaded spec, got {type(spec).__name__}")
    return loaded.with_limit(limit) if limit is not None else loaded


def plan(spec: SpecLike, limit: int | None = None) -> Plan:
    """The plan with every check: the steps (each by its strategy), then the curation, export and train blocks.
    Warnings (likely mistakes that are not errors) are in `plan.warnings`."""
    from curation.validate import check_curation
    from datagen.publish.export import check_export
    from datagen.pipeline.planner import build_plan
    from sft.validate import check_train

    loaded = open_spec(spec, limit)
    p = build_plan(loaded)
    check_curation(loaded, p)
    check_export(loaded, p)
    check_train(loaded, p)
    return p


def describe(p: Plan, max_usd: float | None = None) -> str:
    """The plan as text (what `validate` prints): sources, steps, the curation stages, the export and training, and
    what it would cost (specs/cost.md) against `max_usd` (else the spec's budget)."""
    from curation.validate import describe_curation
    from datagen.pipeline.estimate import describe_estimate, estimate
    from datagen.publish.export import describe_export
    from datagen.pipeline.planner import describe_plan

    if max_usd is None and p.spec.budget is not None:
        max_usd = p.spec.budget.max_usd
    text = describe_plan(p).split("\n")
    train = [line for line in text if line.startswith("  train:")]
    rest = [line for line in text if not line.startswith("  train:")]
    return "\n".join(rest + describe_curation(p.spec.curation) + describe_export(p.loaded, p) + train) + "\n" + \
        describe_estimate(estimate(p), max_usd)


@_loop_safe
def cancel_batches(spec: SpecLike, log: Log | None = None) -> list[tuple]:
    """Cancel the open provider batches of the spec's store: (teacher, batch id, status) of each."""
    from datagen.pipeline.loop import cancel_batches as cancel
    from datagen.store.connection import open_store

    p = plan(spec)
    con = open_store(p.loaded.store_path)
    try:
        return cancel(con, p, log or _default_log)
    finally:
        con.close()


@_loop_safe
def validate(spec: SpecLike) -> Plan:
    """Check a spec without loading any model; the plan, with its warnings. Raises UserError for a bad spec."""
    return plan(spec)


@_loop_safe
def run(spec: SpecLike, *, limit: int | None = None, verbose: bool = False, progress=None, log: Log | None = None,
        checked: Plan | None = None, max_usd: float | None = None, ray: str | None = None,
        retry_failed: bool = False):
    """Generate every step (resuming finished work), then run the `curation:` block. Returns the RunSummary.

    `limit`: the first N input rows of every step fed by a source, in a store of their own. Engine and library
    output goes to the log file beside the store unless `verbose`. `progress(step, done, total, output_tokens)` is
    called as samples are committed. `max_usd` (else the spec's `budget.max_usd`) caps what the store spends in all
    (specs/cost.md). `ray`: a Ray cluster's address (`auto`, `host:port`, or `local` to start one for the run);
    in-process teachers then run as `replicas` actors on it (specs/scale.md). `retry_failed`: ask again the
    requests that failed by their own fault on an earlier run (a 400, a reply that did not parse, a refusal); those
    that failed by the provider's (rate limits, 5xx, timeouts, an outage) are asked again in any case."""
    from datagen import console
    from datagen.pipeline.loop import run_steps
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    import time

    started = time.monotonic()
    log = log or _default_log
    p = checked or plan(spec, limit)
    loaded = p.loaded
    _check_replicas(loaded, ray)
    max_usd = _cap(loaded, max_usd)
    with console.quiet(loaded.log_path, verbose):
        if ray:
            from datagen.teachers.replicas import connect

            connect(ray)
        con = open_store(loaded.store_path)
        try:
            sync_views(con, p.source_tables, p.views)
            summary = run_steps(con, p, progress=progress, log=log, max_usd=max_usd, ray=bool(ray),
                                retry_failed=retry_failed)
            if loaded.spec.curation is not None:
                from curation.run import run_curation

                probe = _probe_generation(con, p, progress, log, max_usd, summary.steps)
                summary.funnel = run_curation(con, loaded, p, log=log, generate_requests=probe)
        finally:
            con.close()
            if ray:
                from datagen.teachers.replicas import disconnect

                disconnect()
    summary.seconds = time.monotonic() - started  # the whole run: engine starts and curation included
    return summary


def _check_replicas(loaded: LoadedSpec, ray: str | None) -> None:
    if ray:
        return
    for name, t in loaded.spec.teachers.items():
        if getattr(t, "replicas", 1) > 1:
            raise loaded.error(("teachers", name, "replicas"), f"replicas: {t.replicas} runs engine copies on a Ray "
                                                               "cluster: run with `datagen run SPEC --ray ADDRESS` "
                                                               "(`--ray local` starts one on this machine), or set "
                                                               "replicas: 1")


def _cap(loaded: LoadedSpec, max_usd: float | None) -> float | None:
    """The spend cap: `max_usd` as given, else the spec's `budget.max_usd`."""
    return max_usd if max_usd is not None or loaded.spec.budget is None else loaded.spec.budget.max_usd


def _probe_generation(con, p: Plan, progress, log: Log, max_usd: float | None, summaries: list | None = None):
    """What curation calls to send model requests (the student's difficulty probe): the run loop's
    generate_requests, under the run's spend cap and progress; each call's summary joins `summaries`."""
    from datagen.pipeline.loop import generate_requests

    def bound(what: str, teacher_name: str, teacher_spec, requests: list, sampling: dict):
        done = generate_requests(con, p, what, teacher_name, teacher_spec, requests, sampling, progress=progress,
                                 log=log, max_usd=max_usd)
        if summaries is not None:
            summaries.append(done)
        return done

    return bound


@_loop_safe
def curate(spec: SpecLike, *, verbose: bool = False, log: Log | None = None, progress=None,
           max_usd: float | None = None) -> list[dict]:
    """Re-run the curation block alone on stored rows. Returns the funnel: [{stage, rows_in, rows_out}]. A student
    probe (`select.difficulty.by: student`) is generated as `run` generates, under `max_usd` (else the spec's
    `budget.max_usd`)."""
    from curation.run import run_curation
    from datagen import console
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    p = plan(spec)
    loaded = p.loaded
    if loaded.spec.curation is None:
        raise UserError(f"{loaded.path.name} has no `curation:` block; add one (see specs/curation.md)")
    with console.quiet(loaded.log_path, verbose, what="curate"):
        con = open_store(loaded.store_path)
        try:
            sync_views(con, p.source_tables, p.views)
            log = log or _default_log
            probe = _probe_generation(con, p, progress, log, _cap(loaded, max_usd))
            return run_curation(con, loaded, p, log=log, generate_requests=probe)
        finally:
            con.close()


@_loop_safe
def status(spec: SpecLike, *, limit: int | None = None) -> dict:
    """Per step: requests done, failed and pending, tokens, the commonest errors and what the strategy adds; and
    the curation funnel: {"steps": [...], "funnel": [...]}."""
    from datagen.pipeline.planner import build_plan
    from datagen.publish.status import status as store_status

    return store_status(build_plan(open_spec(spec, limit)))


@_loop_safe
def query(spec: SpecLike, sql: str, *, limit: int | None = None) -> pyarrow.Table:
    """Read-only SQL over the spec's store (or a `.duckdb` file); the last statement's result as an Arrow table."""
    from datagen.store.readonly import query_arrow

    return query_arrow(_store_of(spec, limit), sql)


@_loop_safe
def load(spec: SpecLike, name: str = "curated", *, limit: int | None = None):
    """The rows of `name` (a step, a source, `curated`, or a store table) as a `datasets.Dataset`."""
    from datagen.store.readonly import relation_arrow

    table = relation_arrow(_store_of(spec, limit), name)
    import datasets

    return datasets.Dataset(table)


@_loop_safe
def export(spec: SpecLike, *, out: str | Path | None = None, format: str | None = None,
           test_split: float | None = None):
    """Write the export rows as Parquet shards plus a dataset card. Returns the ExportResult (path, files, splits)."""
    from datagen.publish.export import export as export_spec

    p = plan(spec)
    return export_spec(p.loaded, out=out, fmt=format, test_split=test_split, plan=p)


@_loop_safe
def push(spec: SpecLike, *, repo_id: str | None = None, public: bool = False, dry_run: bool = False,
         out: str | Path | None = None):
    """Export, then upload to a Hugging Face Hub dataset repository (token from HF_TOKEN). Returns the PushResult."""
    from datagen.publish.push import push as push_spec

    return push_spec(plan(spec).loaded, repo_id=repo_id, public=public, dry_run=dry_run, out=out)


@_loop_safe
def report(spec: SpecLike, *, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report; returns its path."""
    from datagen.publish.report import write_report

    p = plan(spec)
    return write_report(p.loaded, out=out, plan=p)


@_loop_safe
def review(spec: SpecLike, *, port: int = 8765, reviewer: str | None = None,
           on_ready: Callable[[str, str | None], None] | None = None) -> None:
    """Serve the review page (specs/review.md) for the spec's store on 127.0.0.1:`port` until Ctrl-C.
    `on_ready(url, holder)` gets the address with its token once the server listens (`holder`: the process that
    holds the store, when one does: the page then reads a copy and saves nothing). `reviewer` names the person
    whose decisions, ratings and edits these are (default: the login name)."""
    from datagen.review.app import serve

    def say(url: str, holder: str | None) -> None:
        _default_log(f"review: {url}" + (f" (read-only: {holder} holds the store)" if holder else ""))

    serve(plan(spec), port, reviewer or _login_name(), on_ready or say)


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (a container without a passwd entry)
        return "reviewer"


@_loop_safe
def train(spec: SpecLike, *, out: str | Path | None = None, max_steps: int | None = None, verbose: bool = False,
          log: Log | None = None):
    """Train the spec's student on the selected rows, score it before and after, save it. Returns the TrainResult."""
    from datagen import console
    from sft.train import train as train_spec

    p = plan(spec)
    loaded = p.loaded
    log = log or _default_log
    with console.quiet(loaded.log_path, verbose, what="train"):
        generate = _onpolicy_generation(p, log) if loaded.spec.train and loaded.spec.train.objective == "onpolicy" \
            else None
        return train_spec(loaded, out=out, max_steps=max_steps, log=log, generate=generate)


def _onpolicy_generation(p: Plan, log: Log):
    """What on-policy training calls to sample and score (sft/onpolicy.py): the run loop's generate_requests on the
    store, opened for each call and closed before training, under the spec's spend cap. The sources go into the
    store first (the prompts are read from it)."""
    from datagen.pipeline.loop import generate_requests
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    con = open_store(p.loaded.store_path)
    try:
        sync_views(con, p.source_tables, p.views)
    finally:
        con.close()

    def bound(what: str, teacher_name: str, teacher_spec, requests: list, sampling: dict, logprobs=None):
        con = open_store(p.loaded.store_path)
        try:
            return generate_requests(con, p, what, teacher_name, teacher_spec, requests, sampling, log=log,
                                     max_usd=_cap(p.loaded, None), logprobs=logprobs)
        finally:
            con.close()

    return bound


def _store_of(spec: Any, limit: int | None) -> Path:
    """A `.duckdb` path as it is; otherwise the spec's store."""
    if isinstance(spec, (str, os.PathLike)) and str(spec).endswith(".duckdb"):
        return Path(spec)
    return open_spec(spec, limit).store_path
