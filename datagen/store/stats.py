"""Numbers about a store that the dataset card, the HTML report and `datagen status` show: the funnel, tokens,
teachers, lengths.

Every function takes an open (read-only is enough) store connection and returns plain Python values. A table that
an older store does not have yet (the curation tables) reads as empty, never as an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datagen.store.reads import count as count_rows, relation_exists as has_relation
from datagen.store.sql import quote_ident


@dataclass
class Stage:
    name: str
    rows_in: int
    kept: int
    reasons: list[tuple[str, int]] = field(default_factory=list)  # the commonest drop reasons

    @property
    def dropped(self) -> int:
        return self.rows_in - self.kept

    def as_dict(self) -> dict:
        return {"stage": self.name, "rows_in": self.rows_in, "rows_out": self.kept}


def funnel(con, order: list[str] | None = None) -> list[Stage]:
    """The last curation run's stages (decisions the curation block owns; a step's own decisions, an expansion's
    novelty or a vote, are its status lines), in `order` (the spec's `CurationSpec.stage_names()`), stages not in
    it after. The one funnel `datagen status`, the report, the card and the run's summary all show."""
    if not has_relation(con, "decisions"):
        return []
    from datagen.store.decisions import CURATION
    from datagen.store.human import REVIEW_STAGE

    rank = {name: i for i, name in enumerate([REVIEW_STAGE, *(order or [])])}  # people's decisions apply first
    rows = con.execute("SELECT stage, count(*), count(*) FILTER (WHERE kept), min(created_at) FROM decisions "
                       "WHERE owner = ? GROUP BY stage", [CURATION]).fetchall()
    rows.sort(key=lambda r: (rank.get(r[0], len(rank)), r[3], r[0]))
    stages = []
    for name, total, kept, _ in rows:
        reasons = con.execute(
            "SELECT coalesce(reason, '(no reason)'), count(*) AS n FROM decisions WHERE stage = ? AND NOT kept "
            "GROUP BY 1 ORDER BY n DESC, 1 LIMIT 3", [name]).fetchall()
        stages.append(Stage(name, total, kept, [(r, n) for r, n in reasons]))
    return stages


def step_counts(con, steps: list[tuple[str, str, str | None]]) -> list[dict[str, Any]]:
    """Per step (name, strategy, input) of the current spec: requests planned, done, failed, and rows in its view."""
    out = []
    for name, strategy, input_name in steps:
        planned, done, failed = con.execute(
            """
            SELECT count(*), count(*) FILTER (WHERE r.status = 'done'), count(*) FILTER (WHERE r.status = 'failed')
            FROM _plan p LEFT JOIN requests r USING (key) WHERE p.step = ?
            """, [name]).fetchall()[0]
        out.append({"step": name, "strategy": strategy, "input": input_name, "requests": planned,
                    "done": done, "failed": failed, "rows": count_rows(con, name) or 0})
    return out


def step_status(con, step: str) -> dict[str, Any]:
    """For `datagen status`: a step's requests done, failed and pending, tokens, and the commonest errors."""
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE r.status = 'done'), count(*) FILTER (WHERE r.status = 'failed'),
               count(*) FILTER (WHERE r.status = 'pending' OR r.status IS NULL),
               coalesce(sum(r.completion_tokens), 0), {cost_sum(con)}
        FROM _plan p LEFT JOIN requests r USING (key) WHERE p.step = ?
        """, [step]).fetchall()[0]
    errors = con.execute(
        """
        SELECT r.error, count(*) AS n FROM _plan p JOIN requests r USING (key)
        WHERE p.step = ? AND r.status = 'failed' GROUP BY 1 ORDER BY n DESC LIMIT 3
        """, [step]).fetchall()
    return {"step": step, "done": row[0], "failed": row[1], "pending": row[2], "completion_tokens": row[3],
            "cost_usd": row[4], "top_errors": errors, "faults": faults(con, step)}


def faults(con, step: str) -> dict[str, dict[str, Any]]:
    """A step's failed requests by whose fault: {"request" | "provider": {"count", "top_errors": [(error, n)]}}.
    Rows from before the class was recorded (NULL, or a store opened read-only before its migration) count as
    provider faults: a re-run asks them again, as it always did."""
    kind = "coalesce(r.error_kind, 'provider')" if has_column(con, "requests", "error_kind") else "'provider'"
    rows = con.execute(
        f"""
        SELECT {kind} AS kind, r.error, count(*) AS n FROM _plan p JOIN requests r USING (key)
        WHERE p.step = ? AND r.status = 'failed' GROUP BY 1, 2 ORDER BY n DESC, 2
        """, [step]).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for k, error, n in rows:
        entry = out.setdefault(k, {"count": 0, "top_errors": []})
        entry["count"] += n
        if len(entry["top_errors"]) < 3:
            entry["top_errors"].append((error, n))
    return out


def has_column(con, table: str, column: str) -> bool:
    return con.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ?",
                       [table, column]).fetchall()[0][0] > 0


def cost_sum(con) -> str:
    """`sum(r.cost_usd)`, or NULL for a store from before costs were recorded (read-only opens do not migrate)."""
    has = con.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'requests' AND column_name = "
                      "'cost_usd'").fetchall()[0][0]
    return "sum(r.cost_usd)" if has else "NULL::DOUBLE"


def spent(con) -> float:
    """USD the store has recorded as spent, over every request of every run (old versions of the spec too)."""
    return con.execute(f"SELECT coalesce({cost_sum(con)}, 0) FROM requests r").fetchall()[0][0]


def output_means(con) -> dict[str, float]:
    """step -> the mean completion tokens of its finished samples (any version of the spec): what a sample of that
    step is expected to write."""
    rows = con.execute("SELECT step, avg(completion_tokens) FROM requests WHERE status = 'done' AND "
                       "completion_tokens IS NOT NULL GROUP BY step").fetchall()
    return {step: float(mean) for step, mean in rows}


def token_totals(con) -> list[dict[str, Any]]:
    """Tokens and time per step and teacher, over the requests the current spec makes (done and failed)."""
    rows = con.execute(
        f"""
        SELECT r.step, coalesce(r.teacher, ''), count(*), count(*) FILTER (WHERE r.status = 'done'),
               count(*) FILTER (WHERE r.status = 'failed'), coalesce(sum(r.prompt_tokens), 0),
               coalesce(sum(r.completion_tokens), 0), coalesce(sum(r.seconds), 0), {cost_sum(con)}
        FROM requests r JOIN _plan p ON p.key = r.key AND p.step = r.step
        GROUP BY 1, 2 ORDER BY 1, 2
        """
    ).fetchall()
    keys = ("step", "teacher", "requests", "done", "failed", "prompt_tokens", "completion_tokens", "seconds",
            "cost_usd")
    return [dict(zip(keys, r)) for r in rows]


def per_teacher(totals: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for t in totals:
        acc = out.setdefault(t["teacher"], {"requests": 0, "done": 0, "failed": 0, "prompt_tokens": 0,
                                            "completion_tokens": 0, "seconds": 0.0, "cost_usd": None})
        for k in acc:
            acc[k] = add_cost(acc[k], t[k]) if k == "cost_usd" else acc[k] + t[k]
    return out


def add_cost(a: float | None, b: float | None) -> float | None:
    """Costs add up; None (no price) stays None only while nothing has a price."""
    return b if a is None else a if b is None else a + b


def selection_method(plan) -> str:
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
    decided = has_relation(con, "decisions") and con.execute(  # people's own decisions are not a curation run
        "SELECT count(*) FROM decisions WHERE owner IS DISTINCT FROM 'human'").fetchall()[0][0] > 0
    for name, col in (("_curated", "row_id"), ("curated", "_id")):
        if has_relation(con, name):
            try:
                ids = {r[0] for r in con.execute(f"SELECT {col} FROM {quote_ident(name)}").fetchall()}
            except Exception:
                continue
            return ids if ids or decided else None
    return None


def output_lengths(con, step: str, output: str) -> list[tuple]:
    """(output text, completion tokens, finish reason) for every row of a step's view."""
    return con.execute(
        f"SELECT CAST(v.{quote_ident(output)} AS VARCHAR), r.completion_tokens, v._finish_reason "
        f"FROM {quote_ident(step)} v JOIN outputs o ON o._id = v._id JOIN requests r ON r.key = o.key").fetchall()


def number_summary(con, name: str, column: str) -> tuple[int, float | None, float | None]:
    """(rows, mean, max) of a number column of a relation (a step's view); (0, None, None) before it exists."""
    if not has_relation(con, name):
        return 0, None, None
    n, mean, top = con.execute(f"SELECT count(*), avg({quote_ident(column)}), max({quote_ident(column)}) "
                               f"FROM {quote_ident(name)}").fetchone()
    return n, mean, top


def columns_of(con, name: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {quote_ident(name)}").fetchall()]


def text_columns(con, name: str, columns: list[str]) -> list[tuple]:
    """(_id, each column as text) for every row of a relation."""
    select = ", ".join(f"CAST({quote_ident(c)} AS VARCHAR)" for c in columns)
    return con.execute(f"SELECT _id, {select} FROM {quote_ident(name)}").fetchall()


def embedding_sample(con, limit: int) -> tuple[str | None, list[tuple]]:
    """The most used embedding model and up to `limit` (row_id, vector) of it, a stable sample."""
    if not has_relation(con, "embeddings"):
        return None, []
    models = con.execute("SELECT model, count(DISTINCT row_id) AS n FROM embeddings WHERE row_id IS NOT NULL "
                         "GROUP BY 1 ORDER BY n DESC").fetchall()
    if not models:
        return None, []
    model = models[0][0]
    rows = con.execute(
        "SELECT row_id, any_value(vector) FROM embeddings WHERE model = ? AND row_id IS NOT NULL GROUP BY row_id "
        "ORDER BY hash(row_id) LIMIT ?", [model, limit]).fetchall()
    return model, rows


def dropped_at(con) -> dict[str, str]:
    """row_id -> "stage: reason" for every row some stage dropped."""
    if not has_relation(con, "decisions"):
        return {}
    return dict(con.execute("SELECT row_id, any_value(stage || ': ' || coalesce(reason, '')) FROM decisions "
                            "WHERE NOT kept GROUP BY row_id").fetchall())
