"""The `train_runs` table: one row per `datagen train`, written when training starts and completed at the end."""

from __future__ import annotations

import json
from datetime import datetime, UTC

import duckdb


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def start(con: duckdb.DuckDBPyConnection, run_id: str, input_name: str, objective: str, student: str, output: str,
          settings_json: str, train_rows: int, eval_rows: int, round_: int | None = None,
          parent_run: str | None = None) -> None:
    con.execute(
        "INSERT INTO train_runs (id, started_at, status, input, objective, student, output, settings, train_rows, "
        "eval_rows, round, parent_run) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, _now(), input_name, objective, student, output, settings_json, train_rows, eval_rows, round_,
         parent_run])


def status(con: duckdb.DuckDBPyConnection, run_id: str) -> str | None:
    got = con.execute("SELECT status FROM train_runs WHERE id = ?", [run_id]).fetchall()
    return got[0][0] if got else None


def finish(con: duckdb.DuckDBPyConnection, run_id: str, *, steps: int, train_tokens: int, train_seconds: float,
           train_loss: float, before: dict, after: dict) -> None:
    con.execute(
        "UPDATE train_runs SET finished_at = ?, status = 'done', steps = ?, train_tokens = ?, train_seconds = ?, "
        "train_loss = ?, loss_before = ?, loss_after = ?, accuracy_before = ?, accuracy_after = ?, "
        "metrics_before = ?, metrics_after = ? WHERE id = ?",
        [_now(), steps, train_tokens, train_seconds, train_loss, before.get("loss"), after.get("loss"),
         before.get("accuracy"), after.get("accuracy"), json.dumps(before), json.dumps(after), run_id])


def fail(con: duckdb.DuckDBPyConnection, run_id: str, error: str) -> None:
    con.execute("UPDATE train_runs SET finished_at = ?, status = 'failed', error = ? WHERE id = ?",
                [_now(), error[:2000], run_id])
