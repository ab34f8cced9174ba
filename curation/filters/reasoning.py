"""`reasoning`: keep rows whose reasoning trace is there, closed, followed by an answer, and of a length in range.

The columns are the ones a step with `reasoning: true` produces (datagen/reasoning.py): the answer in `column`, the
trace in `<column>_reasoning`, its length in `_reasoning_tokens` (estimated from its characters when a source has no
such column) and `_reasoning_closed`. The score is the trace's length, so near misses can be queried.
"""

from __future__ import annotations

from datagen.reasoning import CLOSED_COLUMN, TOKENS_COLUMN, estimate_tokens, trace_column
from datagen.text import as_text, numeric
from datagen.verdict import Verdict, drop, keep


def default_column(columns: list[str]) -> str | None:
    """The answer column when exactly one column has a trace beside it."""
    found = [c for c in columns if trace_column(c) in columns]
    return found[0] if len(found) == 1 else None


def reasoning_filter(spec, rows: list[dict]) -> list[Verdict]:
    column = spec.column or (default_column(list(rows[0])) if rows else None)
    return [_verdict(spec, column, row) for row in rows]


def _verdict(spec, column: str, row: dict) -> Verdict:
    trace = as_text(row.get(trace_column(column))).strip()
    if not trace:
        return drop(f"no reasoning trace in {trace_column(column)}")
    tokens = numeric(row.get(TOKENS_COLUMN))
    tokens = int(tokens) if tokens is not None else estimate_tokens(trace)
    if row.get(CLOSED_COLUMN) is False:
        return drop(f"unclosed trace: the reply ended inside it after {tokens} tokens (finish reason "
                    f"{row.get('_finish_reason')}); raise max_tokens or bound the trace with `thinking`", tokens)
    if spec.require_answer and not as_text(row.get(column)).strip():
        return drop(f"no answer after the trace ({tokens} tokens)", tokens)
    if spec.min_tokens is not None and tokens < spec.min_tokens:
        return drop(f"trace of {tokens} tokens < min_tokens {spec.min_tokens}", tokens)
    if spec.max_tokens is not None and tokens > spec.max_tokens:
        return drop(f"trace of {tokens} tokens > max_tokens {spec.max_tokens}", tokens)
    return keep(None, tokens)
