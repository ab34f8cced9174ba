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


def describe(p: Plan) -> str:
    from datagen.planner import describe as describe_plan

    return describe_plan(p)


def run(loaded: LoadedSpec, progress=None, log: Log = print, checked: Plan | None = None):
    """Generate every step (resuming finished work), then run the `curation:` block. Returns the RunSummary."""
    from datagen.runloop import run_steps
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    p = checked or plan(loaded)
    con = open_store(loaded.store_path)
    try:
        sync_views(con, p.source_rows, p.views)
        summary = run_steps(con, p, progress=progress, log=log)
        if loaded.spec.curation is not None:
            from curation.run import run_curation

            run_curation(con, loaded, p, log=log)
    finally:
        con.close()
    return summary


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
