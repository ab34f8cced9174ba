"""Provider batch jobs in the store (tables `batches` and `batch_requests`, migration 007): the journal a
batch-mode teacher writes before it waits (datagen/teachers/journal.py), so a re-run polls a batch instead of
creating another one for the same requests.

A request is still out in a batch while its `attempts` are what they were when the batch was sent (no reply recorded
since, in any commit) and the batch did not put it back. So a batch whose output was read but not yet committed
when the run was killed is still open, and the next run reads its output again.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from datagen.store.reads import _for_keys, relation_exists
from datagen.store.sql import transaction

TERMINAL = ("completed", "expired", "failed", "cancelled")

_OPEN = """
    SELECT b.input_file_id, b.batch_id, b.teacher, b.status, list(br.key ORDER BY br.key), b.requests, b.completed,
           b.failed, b.submitted_at, b.updated_at, any_value(r.step)
    FROM batches b JOIN batch_requests br USING (input_file_id) JOIN requests r ON r.key = br.key
    WHERE NOT br.requeued AND r.attempts = br.attempts_at_send {where}
    GROUP BY ALL ORDER BY b.submitted_at, b.input_file_id
"""


def open_batches(con: duckdb.DuckDBPyConnection, teacher: str | None = None) -> list[dict]:
    """The batches (of one teacher, or all) that still hold requests without a recorded reply."""
    if not relation_exists(con, "batch_requests"):  # a store from before batches, opened read-only
        return []
    where, params = ("AND b.teacher = ?", [teacher]) if teacher is not None else ("", [])
    names = ("input_file_id", "batch_id", "teacher", "status", "keys", "requests", "completed", "failed",
             "submitted_at", "updated_at", "step")
    return [dict(zip(names, r)) for r in con.execute(_OPEN.format(where=where), params).fetchall()]


def record_submitting(con: duckdb.DuckDBPyConnection, teacher: str, input_file_id: str, keys: list[str]) -> None:
    with transaction(con):
        con.execute("INSERT INTO batches (input_file_id, teacher, status, requests) VALUES (?, ?, 'submitting', ?)",
                    [input_file_id, teacher, len(keys)])
        _for_keys(con, keys, "INSERT INTO batch_requests SELECT ?, r.key, r.attempts, false FROM requests r "
                             "JOIN _wanted_keys w ON w.key = r.key", [input_file_id])


def record_submitted(con: duckdb.DuckDBPyConnection, input_file_id: str, batch_id: str, status: str) -> None:
    con.execute("UPDATE batches SET batch_id = ?, status = ?, updated_at = current_timestamp WHERE input_file_id = ?",
                [batch_id, status, input_file_id])


def record_status(con: duckdb.DuckDBPyConnection, input_file_id: str, status: str, completed: int | None,
                  failed: int | None, error: str | None = None) -> None:
    con.execute("UPDATE batches SET status = ?, completed = coalesce(?, completed), failed = coalesce(?, failed), "
                "error = coalesce(?, error), updated_at = current_timestamp WHERE input_file_id = ?",
                [status, completed, failed, error, input_file_id])


def requeue(con: duckdb.DuckDBPyConnection, input_file_id: str, keys: list[str], reason: str) -> None:
    """The batch will not answer these requests: they leave it and are pending again, with the reason."""
    with transaction(con):
        _for_keys(con, keys, "UPDATE batch_requests SET requeued = true FROM _wanted_keys w "
                             "WHERE batch_requests.key = w.key AND input_file_id = ?", [input_file_id])
        _for_keys(con, keys, "UPDATE requests SET status = 'pending', error = ?, updated_at = current_timestamp "
                             "FROM _wanted_keys w WHERE requests.key = w.key AND requests.status <> 'done'", [reason])


def forget(con: duckdb.DuckDBPyConnection, input_file_id: str) -> None:
    with transaction(con):
        con.execute("DELETE FROM batch_requests WHERE input_file_id = ?", [input_file_id])
        con.execute("DELETE FROM batches WHERE input_file_id = ?", [input_file_id])


def close_unplanned(con: duckdb.DuckDBPyConnection) -> int:
    """Batches that are over (or being cancelled) and hold only requests the current spec no longer makes: nothing
    will ever read them, so they close. Returns how many closed."""
    rows = con.execute(_OPEN.format(where="AND b.status IN ('completed', 'expired', 'failed', 'cancelled', "
                                          "'cancelling')")).fetchall()
    closed = 0
    for input_file_id, _, _, _, keys, *_ in rows:
        planned = _for_keys(con, keys, "SELECT count(*) FROM _plan p JOIN _wanted_keys w ON w.key = p.key")[0][0]
        if planned == 0:
            requeue(con, input_file_id, keys, "its batch ended and the spec no longer makes this request")
            closed += 1
    return closed


class StoreJournal:
    """The journal a batch-mode teacher writes (datagen/teachers/journal.py), over one store and one teacher."""

    def __init__(self, con: duckdb.DuckDBPyConnection, teacher: str, log: Callable[[str], None]):
        self.con, self.teacher, self.log = con, teacher, log

    def open_batches(self) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(input_file_id=b["input_file_id"], batch_id=b["batch_id"], status=b["status"],
                                keys=b["keys"]) for b in open_batches(self.con, self.teacher)]

    def submitting(self, input_file_id: str, keys: list[str]) -> None:
        record_submitting(self.con, self.teacher, input_file_id, keys)

    def submitted(self, input_file_id: str, batch_id: str, status: str) -> None:
        record_submitted(self.con, input_file_id, batch_id, status)

    def update(self, input_file_id: str, status: str, completed: int | None, failed: int | None,
               error: str | None = None) -> None:
        record_status(self.con, input_file_id, status, completed, failed, error)

    def requeue(self, input_file_id: str, keys: list[str], reason: str) -> None:
        requeue(self.con, input_file_id, keys, reason)

    def forget(self, input_file_id: str) -> None:
        forget(self.con, input_file_id)

    def note(self, line: str) -> None:
        self.log(line)
