"""Decisions that generation steps make about their own rows (expansion's novelty, multi-teacher votes).

Each is a `decisions` row with the step's name as its stage; the step's view reads them. A step recomputes its
verdicts from stored rows whenever it runs, and writing them replaces that stage's earlier verdicts for those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from datagen.store.writes import transaction


@dataclass
class Verdict:
    kept: bool
    reason: str
    score: float | None = None
    duplicate_of: str | None = None


def write_decisions(con, stage: str, verdicts: list[tuple[str, Verdict]]) -> None:
    """Replace these rows' verdicts for this stage (a replayed round writes the same verdicts again)."""
    import pyarrow as pa

    if not verdicts:
        return
    table = pa.table({
        "row_id": [rid for rid, _ in verdicts], "stage": [stage] * len(verdicts),
        "kept": pa.array([v.kept for _, v in verdicts], pa.bool_()),
        "reason": [v.reason for _, v in verdicts],
        "score": pa.array([v.score for _, v in verdicts], pa.float64()),
        "duplicate_of": pa.array([v.duplicate_of for _, v in verdicts], pa.string()),
    })
    con.register("_verdicts", table)
    try:
        with transaction(con):
            con.execute("DELETE FROM decisions WHERE stage = ? AND row_id IN (SELECT row_id FROM _verdicts)", [stage])
            con.execute("INSERT INTO decisions (row_id, stage, kept, reason, score, duplicate_of) "
                        "SELECT row_id, stage, kept, reason, score, duplicate_of FROM _verdicts")
    finally:
        con.unregister("_verdicts")
