"""The library's front door: what the `datagen` command does, as functions (the CLI is a thin layer over them).

Each takes a loaded spec (`datagen.spec.load.load_spec(path)`), checks the whole spec first (`plan`), and returns
structured results rather than printing.
"""

from __future__ import annotations

from typing import Callable

from datagen.spec.load import LoadedSpec
from datagen.spec.plan import Plan

Log = Callable[[str], None]


def plan(loaded: LoadedSpec) -> Plan:
    """The plan with every check: the steps (each by its strategy), then the curation, export and train blocks."""
    from curation.validate import check_curation
    from datagen.export import check_export
    from datagen.planner import build_plan
    from sft.validate import check_train

    p = build_plan(loaded)
    check_curation(loaded, p)
    check_export(loaded, p)
    check_train(loaded, p)
    return p


def describe(p: Plan, max_usd: float | None = None) -> str:
    """The plan, and what it would cost (specs/cost.md) against `max_usd` (else the spec's budget)."""
    from datagen.estimate import describe_estimate, estimate
    from datagen.planner import describe as describe_plan

    if max_usd is None and p.spec.budget is not None:
        max_usd = p.spec.budget.max_usd
    return describe_plan(p) + "\n" + describe_estimate(estimate(p), max_usd)


def cancel_batches(loaded: LoadedSpec, log: Log = print) -> list[tuple]:
    """Cancel the open provider batches of the spec's store: (teacher, batch id, status) of each."""
    from datagen.runloop import cancel_batches as cancel
    from datagen.store.connection import open_store

    p = plan(loaded)
    con = open_store(loaded.store_path)
    try:
        return cancel(con, p, log)
    finally:
        con.close()


def run(loaded: LoadedSpec, progress=None, log: Log = print, checked: Plan | None = None,
        max_usd: float | None = None, ray: str | None = None):
    """Generate every step (resuming finished work), then run the `curation:` block. Returns the RunSummary.

    `max_usd` (else the spec's `budget.max_usd`) caps what the store spends in all (specs/cost.md). `ray`: a Ray
    cluster's address (`auto`, `host:port`, or `local` to start one for the run); in-process teachers then run as
    `replicas` actors on it (specs/scale.md)."""
    from datagen.runloop import run_steps
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    p = checked or plan(loaded)
    _check_replicas(loaded, ray)
    if max_usd is None and loaded.spec.budget is not None:
        max_usd = loaded.spec.budget.max_usd
    if ray:
        from datagen.teachers.replicas import connect

        connect(ray)
    con = open_store(loaded.store_path)
    try:
        sync_views(con, p.source_rows, p.views)
        summary = run_steps(con, p, progress=progress, log=log, max_usd=max_usd, ray=bool(ray))
        if loaded.spec.curation is not None:
            from curation.run import run_curation

            run_curation(con, loaded, p, log=log)
    finally:
        con.close()
        if ray:
            from datagen.teachers.replicas import disconnect

            disconnect()
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


def curate(loaded: LoadedSpec, log: Log = print) -> list[dict]:
    """Re-run the curation block alone on stored rows. Returns the funnel (stage, rows_in, rows_out)."""
    from curation.run import run_curation
    from datagen.errors import UserError
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    if loaded.spec.curation is None:
        raise UserError(f"{loaded.path} has no `curation:` block; add one (see specs/curation.md)")
    p = plan(loaded)
    con = open_store(loaded.store_path)
    try:
        sync_views(con, p.source_rows, p.views)
        return run_curation(con, loaded, p, log=log)
    finally:
        con.close()
