"""`datagen status`: per step, how many of the current spec's requests are done, failed and pending."""

from __future__ import annotations

from pathlib import Path

from datagen.store.readonly import open_readonly


def step_status(store: Path, steps: list[str]) -> list[dict]:
    con = open_readonly(store)
    try:
        out = []
        for step in steps:
            row = con.execute(
                """
                SELECT count(*) FILTER (WHERE r.status = 'done'), count(*) FILTER (WHERE r.status = 'failed'),
                       count(*) FILTER (WHERE r.status = 'pending' OR r.status IS NULL),
                       coalesce(sum(r.completion_tokens), 0)
                FROM _plan p LEFT JOIN requests r USING (key) WHERE p.step = ?
                """,
                [step],
            ).fetchone()
            errors = con.execute(
                """
                SELECT r.error, count(*) AS n FROM _plan p JOIN requests r USING (key)
                WHERE p.step = ? AND r.status = 'failed' GROUP BY 1 ORDER BY n DESC LIMIT 3
                """,
                [step],
            ).fetchall()
            # what judge and self steps derive from their rows: pairs, kept samples (datagen/strategies/)
            derived = con.execute(
                "SELECT stage, count(*) FILTER (WHERE kept), count(*) FILTER (WHERE NOT kept) FROM decisions "
                "WHERE stage IN (?, ?) GROUP BY 1", [f"pairs:{step}", f"self:{step}"]).fetchall()
            out.append({"step": step, "done": row[0], "failed": row[1], "pending": row[2],
                        "completion_tokens": row[3], "top_errors": errors, "derived": derived})
        return out
    finally:
        con.close()


def strategy_status(con, step) -> list[str]:
    """Lines a strategy adds under its step: an expansion's accepted items and rejections, a curate step's coverage."""
    import duckdb

    try:
        if step.strategy == "expand":
            from datagen.strategies.expand import status_lines

            return status_lines(con, step)
        if step.strategy == "curate":
            from datagen.strategies.curate import status_lines

            return status_lines(con, step)
    except duckdb.CatalogException:  # the step's view is not there yet (the spec changed since the last run)
        return []
    return []
