"""The `_runs` table: one row per `datagen run`, written when it starts and completed when it ends."""

from __future__ import annotations

from datetime import datetime

import duckdb


def start(con: duckdb.DuckDBPyConnection, started: datetime, pid: int, spec_json: str) -> None:
    con.execute("INSERT INTO _runs (started_at, status, pid, spec) VALUES (?, 'running', ?, ?)",
                [started, pid, spec_json])


def finish(con: duckdb.DuckDBPyConnection, started: datetime, status: str, summary_json: str) -> None:
    con.execute("UPDATE _runs SET finished_at = current_timestamp, status = ?, summary = ? WHERE started_at = ?",
                [status, summary_json, started])
