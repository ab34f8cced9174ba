"""A proposed change to curation/run.py, applied by monkeypatching for `curation.py --columnar-decisions`.

run.py's Recorder keeps one dict per decision: at a million rows and six stages that is six million dicts, about
2.5 GB. Here each stage's decisions become one Arrow table (about 50 MB at a million rows) and write_results
concatenates them. run.py is being restructured by others, so the change is measured here and proposed, not made.
"""

from __future__ import annotations

from datetime import timedelta


def record(self, stage: str, alive: list[int], verdicts: list[tuple], seconds: float) -> list[int]:
    """Recorder.record, columnar: one Arrow table per stage instead of one dict per row."""
    import pyarrow as pa

    assert len(verdicts) == len(alive), f"stage {stage} gave {len(verdicts)} verdicts for {len(alive)} rows"
    stamp = self.started + timedelta(microseconds=len(self.funnel))
    ok = [bool(v[0]) for v in verdicts]
    self.decisions.append(pa.table({
        "row_id": pa.array([self.rows[i]["_id"] for i in alive], pa.string()),
        "stage": pa.array([stage] * len(alive), pa.string()),
        "kept": pa.array(ok, pa.bool_()),
        "reason": pa.array([v[1] for v in verdicts], pa.string()),
        "score": pa.array([None if v[2] is None else float(v[2]) for v in verdicts], pa.float64()),
        "duplicate_of": pa.array([None if len(v) < 4 or v[3] is None else self.rows[v[3]]["_id"]
                                  for v in verdicts], pa.string()),
        "created_at": pa.array([stamp] * len(alive), pa.timestamp("us")),
    }))
    kept = [i for i, k in zip(alive, ok) if k]
    self.funnel.append({"stage": stage, "rows_in": len(alive), "rows_out": len(kept), "seconds": seconds})
    return kept


def write_results(con, input_name: str, decisions: list, selected: list[str]) -> None:
    """run.write_results with `decisions` as per-stage tables: the same statements, the tables concatenated."""
    import pyarrow as pa

    from curation.run import _curation_stage_sql
    from datagen.store.connection import quote_ident
    from datagen.store.writes import transaction

    table = pa.concat_tables(decisions)
    ranks = pa.table({"row_id": pa.array(selected, pa.string()), "rank": pa.array(range(len(selected)), pa.int32())})
    con.register("_decisions_batch", table)
    con.register("_curated_batch", ranks)
    try:
        with transaction(con):
            con.execute(f"DELETE FROM decisions WHERE {_curation_stage_sql()}")
            con.execute("INSERT INTO decisions (row_id, stage, kept, reason, score, duplicate_of, created_at) "
                        "SELECT row_id, stage, kept, reason, score, duplicate_of, created_at FROM _decisions_batch")
            con.execute("DELETE FROM _curated")
            con.execute("INSERT INTO _curated SELECT row_id, rank FROM _curated_batch")
            con.execute(f"CREATE OR REPLACE VIEW curated AS SELECT i.* FROM {quote_ident(input_name)} i "
                        "JOIN _curated c ON c.row_id = i._id ORDER BY c.rank")
    finally:
        con.unregister("_decisions_batch")
        con.unregister("_curated_batch")


def apply() -> None:
    from curation import run

    run.Recorder.record = record
    run.write_results = write_results
