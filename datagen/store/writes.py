"""Bulk writes of generation results. One batch is one transaction: a crash loses at most the batch in flight."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any

import duckdb

from datagen.keys import row_id
from datagen.store import soft_labels
from datagen.store.sql import quote_ident, transaction  # noqa: F401  (transaction re-exported)


@dataclass
class BatchResult:
    """Rows to write for one batch, built by the run loop from teacher samples."""

    requests: list[dict[str, Any]] = field(default_factory=list)  # key, status, error, tokens, seconds
    outputs: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # soft_labels rows, one per sample

    def add_failure(self, key: str, error: str, sample, cost_usd: float | None = None,
                    error_kind: str = "provider") -> None:
        """`error_kind`: 'request' (the request's own fault: not asked again on a re-run unless --retry-failed) or
        'provider' (asked again)."""
        self.requests.append({**_request_row(key, "failed", error, sample, cost_usd), "error_kind": error_kind})

    def add_row(self, req, sample, fields: dict[str, Any], teacher: str, cost_usd: float | None = None) -> str:
        rid = row_id(req.key)
        self.requests.append(_request_row(req.key, "done", None, sample, cost_usd))
        self.outputs.append({
            "_id": rid, "key": req.key, "step": req.step, "_parent_id": req.parent_id,
            "_sample_index": req.sample_index, "_teacher": teacher, "_finish_reason": sample.finish_reason,
            "_created_at": datetime.now(UTC).replace(tzinfo=None), "text": sample.text,
            "fields": json.dumps(fields, ensure_ascii=False) if fields else None,
        })
        if req.parent_id is not None:
            self.lineage.append({"child_id": rid, "parent_id": req.parent_id, "role": "input"})
        for parent, role in req.lineage:
            self.lineage.append({"child_id": rid, "parent_id": parent, "role": role})
        if sample.logprobs:
            self.logprobs.append(soft_labels.encode(rid, sample.logprobs))
        return rid


def _request_row(key: str, status: str, error: str | None, sample, cost_usd: float | None) -> dict[str, Any]:
    return {"key": key, "status": status, "error": error, "prompt_tokens": sample.prompt_tokens,
            "completion_tokens": sample.completion_tokens, "seconds": sample.seconds,
            "worker": getattr(sample, "worker", None), "cost_usd": cost_usd, "error_kind": None}


def insert_pending(con: duckdb.DuckDBPyConnection, step: str, requests: list, keys_now: list[str] | None) -> None:
    """Record this step's current keys (`_plan`; None leaves it alone) and add new requests as pending, in one
    transaction."""
    import pyarrow as pa

    pending = pa.table({
        "key": [r.key for r in requests],
        "step": [r.step for r in requests],
        "teacher": [r.teacher for r in requests],
        "parent_id": [r.parent_id for r in requests],
        "sample_index": pa.array([r.sample_index for r in requests], pa.int32()),
        "messages": [json.dumps(r.messages, ensure_ascii=False) for r in requests],
    })
    with transaction(con):
        if keys_now is not None:
            con.execute("DELETE FROM _plan WHERE step = ?", [step])
            insert_rows(con, "_plan", pa.table({"step": [step] * len(keys_now), "key": keys_now}))
        con.register("_pending_batch", pending)
        con.execute(
            """
            INSERT INTO requests (key, step, teacher, parent_id, sample_index, status, messages)
            SELECT b.key, b.step, b.teacher, b.parent_id, b.sample_index, 'pending', b.messages
            FROM _pending_batch b ANTI JOIN requests r ON r.key = b.key
            """
        )
    con.unregister("_pending_batch")


def write_batch(con: duckdb.DuckDBPyConnection, result: BatchResult) -> None:
    import pyarrow as pa

    reqs = pa.Table.from_pylist(result.requests, schema=pa.schema([
        ("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()), ("seconds", pa.float64()), ("worker", pa.string()),
        ("cost_usd", pa.float64()), ("error_kind", pa.string())]))
    with transaction(con):
        con.register("_req_batch", reqs)
        con.execute(
            """
            UPDATE requests SET status = b.status, error = b.error, prompt_tokens = b.prompt_tokens,
                completion_tokens = b.completion_tokens, seconds = b.seconds, worker = b.worker,
                error_kind = b.error_kind, attempts = requests.attempts + 1,
                -- money spent on a key adds up: a failed request that is sent again was paid for both times
                cost_usd = CASE WHEN b.cost_usd IS NULL THEN requests.cost_usd
                                ELSE coalesce(requests.cost_usd, 0) + b.cost_usd END,
                updated_at = current_timestamp
            FROM _req_batch b WHERE requests.key = b.key
            """
        )
        if result.outputs:
            ids = pa.table({"_id": [o["_id"] for o in result.outputs]})
            con.register("_ids_batch", ids)
            # a redone request replaces what a half-remembered earlier attempt left, so nothing is duplicated
            for table, col in (("outputs", "_id"), ("lineage", "child_id"), ("soft_labels", "row_id")):
                con.execute(f"DELETE FROM {table} WHERE {col} IN (SELECT _id FROM _ids_batch)")
            _insert(con, "outputs", result.outputs, _OUTPUT_SCHEMA())
        if result.lineage:
            _insert(con, "lineage", result.lineage, None)
        if result.logprobs:
            _insert(con, "soft_labels", result.logprobs, soft_labels.arrow_schema())
    for name in ("_req_batch", "_ids_batch"):
        try:
            con.unregister(name)
        except Exception:
            pass


def _OUTPUT_SCHEMA():
    import pyarrow as pa

    return pa.schema([("_id", pa.string()), ("key", pa.string()), ("step", pa.string()),
                      ("_parent_id", pa.string()), ("_sample_index", pa.int32()), ("_teacher", pa.string()),
                      ("_finish_reason", pa.string()), ("_created_at", pa.timestamp("us")), ("text", pa.string()),
                      ("fields", pa.string())])


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict], schema) -> None:
    import pyarrow as pa

    insert_rows(con, table, pa.Table.from_pylist(rows, schema=schema))


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, arrow) -> None:
    """Append an Arrow table's rows to a store table, matching columns by name (`table` is one of ours, never a
    user's string)."""
    con.register("_insert_batch", arrow)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _insert_batch")
    finally:
        con.unregister("_insert_batch")


def rows_to_arrow(rows: list[dict]):
    """Python rows as one Arrow table; a column of mixed types is a UserError that says so."""
    import pyarrow as pa

    from datagen.errors import UserError
    try:
        arrow = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(f"rows have values of mixed types in one column ({exc}); make each column one type") from None
    for i, f in enumerate(arrow.schema):  # an all-null column has no type DuckDB can store: make it text
        if pa.types.is_null(f.type):
            arrow = arrow.set_column(i, pa.field(f.name, pa.string()), arrow.column(i).cast(pa.string()))
    return arrow


def create_table_from_rows(con: duckdb.DuckDBPyConnection, table: str, rows) -> None:
    """(Re)create `table` from Python rows, or from an Arrow table made of them by rows_to_arrow."""
    arrow = rows_to_arrow(rows) if isinstance(rows, list) else rows
    con.register("_arrow_rows", arrow)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {quote_ident(table)} AS SELECT * FROM _arrow_rows")
    finally:
        con.unregister("_arrow_rows")
