"""`trajectory`: limits on a conversation's or an agent trajectory's turns and tool calls, from the counts the step
wrote beside its trajectory column (specs/trajectories.md)."""

from __future__ import annotations

from datagen.verdict import Verdict


def trajectory_filter(spec, rows: list[dict]) -> list[Verdict]:
    col = spec.column
    out = []
    for row in rows:
        turns, calls = row.get(f"{col}_turns"), row.get(f"{col}_tool_calls")
        errors, invalid = row.get(f"{col}_tool_errors"), row.get(f"{col}_invalid_calls")
        reason = None
        if spec.min_turns is not None and (turns or 0) < spec.min_turns:
            reason = f"{turns} turns < min_turns {spec.min_turns}"
        elif spec.max_turns is not None and (turns or 0) > spec.max_turns:
            reason = f"{turns} turns > max_turns {spec.max_turns}"
        elif spec.min_tool_calls is not None and (calls or 0) < spec.min_tool_calls:
            reason = f"{calls or 0} tool calls < min_tool_calls {spec.min_tool_calls}"
        elif spec.max_tool_calls is not None and (calls or 0) > spec.max_tool_calls:
            reason = f"{calls} tool calls > max_tool_calls {spec.max_tool_calls}"
        elif spec.max_tool_errors is not None and (errors or 0) > spec.max_tool_errors:
            reason = f"{errors} failed tool calls > max_tool_errors {spec.max_tool_errors}"
        elif spec.valid_tool_calls and invalid:
            reason = f"{invalid} invalid tool calls (no such tool, or arguments that do not parse or match its schema)"
        out.append(Verdict(reason is None, reason, float(calls) if calls is not None else None))
    return out
