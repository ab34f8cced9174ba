"""Numbers about a store that the dataset card and the HTML report both show: the funnel, tokens, teachers.

Every function takes an open (read-only is enough) store connection and returns plain Python values. A table that
an older store does not have yet (the curation tables) reads as empty, never as an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datagen.spec.plan import Plan
from datagen.store.connection import quote_ident


def has_relation(con, name: str) -> bool:
    """True when the store has a table or view with this name."""
    row = con.execute(
        "SELECT count(*) FROM (SELECT table_name AS n FROM duckdb_tables() UNION ALL "
        "SELECT view_name FROM duckdb_views()) WHERE n = ?", [name]).fetchone()
    return bool(row[0])


def count_rows(con, name: str) -> int | None:
    if not has_relation(con, name):
        return None
    try:
        return con.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()[0]
    except Exception:  # a view whose underlying table is missing in this store
        return None


@dataclass
class Stage:
    name: str
    rows_in: int
    kept: int
    reasons: list[tuple[str, int]] = field(default_factory=list)  # the commonest drop reasons

    @property
    def dropped(self) -> int:
        return self.rows_in - self.kept


def curation_funnel(con) -> list[Stage]:
    """One entry per curation (or novelty) stage in the order the stages ran; empty when nothing was decided."""
    if not has_relation(con, "decisions"):
        return []
    rows = con.execute(
        """
        SELECT stage, count(*), count(*) FILTER (WHERE kept) FROM decisions
        GROUP BY stage ORDER BY min(created_at), count(*) DESC, stage
        """
    ).fetchall()
    stages = []
    for name, total, kept in rows:
        reasons = con.execute(
            "SELECT coalesce(reason, '(no reason)'), count(*) AS n FROM decisions WHERE stage = ? AND NOT kept "
            "GROUP BY 1 ORDER BY n DESC, 1 LIMIT 3", [name]).fetchall()
        stages.append(Stage(name, total, kept, [(r, n) for r, n in reasons]))
    return stages


def step_counts(con, plan: Plan) -> list[dict[str, Any]]:
    """Per step of the current spec: requests planned, done, failed, and rows in its view."""
    out = []
    for st in plan.steps:
        planned, done, failed = con.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE r.status = 'done'), count(*) FILTER (WHERE r.status = 'failed')
            FROM _plan p LEFT JOIN requests r USING (key) WHERE p.step = ?
            """, [st.name]).fetchone()
        out.append({"step": st.name, "strategy": st.spec.strategy, "input": st.input, "requests": planned,
                    "done": done, "failed": failed, "rows": count_rows(con, st.name) or 0})
    return out


def token_totals(con) -> list[dict[str, Any]]:
    """Tokens and time per step and teacher, over the requests the current spec makes (done and failed)."""
    rows = con.execute(
        """
        SELECT r.step, coalesce(r.teacher, ''), count(*), count(*) FILTER (WHERE r.status = 'done'),
               count(*) FILTER (WHERE r.status = 'failed'), coalesce(sum(r.prompt_tokens), 0),
               coalesce(sum(r.completion_tokens), 0), coalesce(sum(r.seconds), 0)
        FROM requests r JOIN _plan p ON p.key = r.key AND p.step = r.step
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    ).fetchall()
    keys = ("step", "teacher", "requests", "done", "failed", "prompt_tokens", "completion_tokens", "seconds")
    return [dict(zip(keys, r)) for r in rows]


def per_teacher(totals: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for t in totals:
        acc = out.setdefault(t["teacher"], {"requests": 0, "done": 0, "failed": 0, "prompt_tokens": 0,
                                            "completion_tokens": 0, "seconds": 0.0})
        for k in acc:
            acc[k] += t[k]
    return out


def selection_method(plan: Plan) -> str:
    """One line saying how the final rows were chosen."""
    cur = plan.spec.curation
    if cur is None:
        return "no curation: every row the last step produced"
    select = cur.select
    if select is None:
        return "no selection: every row that passed the filters, decontamination and dedup"
    if hasattr(select, "model_dump"):
        select = select.model_dump(exclude_none=True, exclude_defaults=False)
    parts = [f"n = {select.get('n')}"]
    for key in ("quality", "difficulty", "diversity"):
        value = select.get(key)
        if value:
            parts.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
    if len(parts) == 1:
        parts.append("no quality, difficulty or diversity criterion")
    return "; ".join(parts)


def curated_ids(con) -> set[str] | None:
    """The ids of the selected rows, or None when curation has not run (no decisions and no selected rows)."""
    decided = has_relation(con, "decisions") and con.execute("SELECT count(*) FROM decisions").fetchone()[0] > 0
    for name, col in (("_curated", "row_id"), ("curated", "_id")):
        if has_relation(con, name):
            try:
                ids = {r[0] for r in con.execute(f"SELECT {col} FROM {quote_ident(name)}").fetchall()}
            except Exception:
                continue
            return ids if ids or decided else None
    return None
