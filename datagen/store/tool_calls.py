"""The `tool_calls` table: every call an agent step's teacher made, its arguments, result, error and seconds."""

from __future__ import annotations

import duckdb

from datagen.store.sql import transaction


def recorded(con: duckdb.DuckDBPyConnection, output_ids: list[str]) -> dict[str, list[dict]]:
    """output_id -> its calls in order (tool, arguments, result, error, seconds), for the turns that have any."""
    if not output_ids:
        return {}
    import pyarrow as pa

    con.register("_wanted_ids", pa.table({"id": pa.array(output_ids, pa.string())}))
    try:
        got = con.execute("SELECT t.output_id, t.tool, t.arguments, t.result, t.error, t.seconds FROM tool_calls t "
                          "JOIN _wanted_ids w ON w.id = t.output_id ORDER BY t.output_id, t.call_index").fetchall()
    finally:
        con.unregister("_wanted_ids")
    out: dict[str, list[dict]] = {}
    for oid, tool, arguments, result, error, seconds in got:
        out.setdefault(oid, []).append({"tool": tool, "arguments": arguments, "result": result, "error": error,
                                        "seconds": seconds})
    return out


def record(con: duckdb.DuckDBPyConnection, step: str, rows: list[dict]) -> None:
    """Add calls ({output_id, call_index, tool, arguments, result, error, seconds}) in one transaction; a call
    already recorded is left as it is."""
    if not rows:
        return
    with transaction(con):
        con.executemany(
            "INSERT INTO tool_calls (output_id, call_index, step, tool, arguments, result, error, seconds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [[r["output_id"], r["call_index"], step, r["tool"], r["arguments"], r["result"], r["error"],
              r["seconds"]] for r in rows])


def step_stats(con: duckdb.DuckDBPyConnection, step: str) -> tuple[int, int, list[tuple[str, int, int]]]:
    """(calls, failed calls, per tool: (tool, calls, failed)) of a step."""
    per = con.execute("SELECT coalesce(tool, '(unparsed)'), count(*), count(error) FROM tool_calls WHERE step = ? "
                      "GROUP BY 1 ORDER BY 2 DESC, 1", [step]).fetchall()
    return sum(n for _, n, _ in per), sum(e for _, _, e in per), per
