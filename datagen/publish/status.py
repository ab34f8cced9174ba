"""`datagen status`: per step, how many of the current spec's requests are done, failed and pending, what the step
derived (pairs, kept samples), the lines its strategy adds, and the curation funnel."""

from __future__ import annotations

from pathlib import Path

from datagen.review.agreement import judge_agreement
from datagen.spec.plan import Plan
from datagen.store import stats
from datagen.store.batches import open_batches
from datagen.store.readonly import open_readonly
from datagen.strategies import strategy_of


def status(plan: Plan, store: Path | None = None) -> dict:
    """{"steps": [{step, done, failed, pending, completion_tokens, cost_usd, top_errors, faults, lines}],
    "funnel": [...], "cost_usd": the steps' total, "batches": the open provider batches, "agreement": a line per
    judge step people rated rows of (datagen/review/agreement.py)}; `faults` splits the failed requests by whose
    fault (stats.faults)."""
    con = open_readonly(store or plan.loaded.store_path)
    try:
        steps = []
        for st in plan.steps:
            row = stats.step_status(con, st.name)
            row["lines"] = strategy_of(st.spec).status_lines(con, st)
            steps.append(row)
        funnel = [s.as_dict() for s in stats.funnel(con, plan.stage_order)]
        costs = [s["cost_usd"] for s in steps if s["cost_usd"] is not None]
        return {"steps": steps, "funnel": funnel, "cost_usd": sum(costs) if costs else None,
                "batches": open_batches(con), "agreement": [a.line() for a in judge_agreement(con, plan)]}
    finally:
        con.close()
