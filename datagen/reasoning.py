"""Reasoning traces: a teacher's thinking, kept apart from its answer.

A reasoning teacher writes a trace, then an answer. A server with a reasoning parser (DeepSeek's API, `vllm serve
--reasoning-parser ...`) returns the trace in `message.reasoning_content` (or `message.reasoning`); a model served
without one writes it inline, as a leading `<think>...</think>` block. `split` is the one place that takes such a
block apart (the teachers call it on inline text); `assistant_message` puts trace and answer back together for export
and training. Nothing here imports the rest of datagen, so teachers, strategies, curation and sft all use it.

A step with `reasoning: true` stores the answer in its `output` column and these beside it (`columns`):
`<output>_reasoning` (the trace), `_reasoning_tokens` (its length) and `_reasoning_closed` (false when the reply
ended inside the trace, so no answer was written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TRACE_SUFFIX = "_reasoning"
TOKENS_COLUMN = "_reasoning_tokens"
CLOSED_COLUMN = "_reasoning_closed"


@dataclass(frozen=True)
class Markers:
    start: str = "<think>"
    end: str = "</think>"


@dataclass
class Reasoning:
    """One reply's trace."""

    text: str
    tokens: int | None = None  # counted by the teacher's tokenizer, or by the server; None: not counted
    closed: bool = True  # False: the reply ended inside the trace, so there is no answer
    waits: int = 0  # budget forcing: how many times the wait word replaced an early end
    phases: int = 0  # budget forcing: generation rounds (thinking rounds plus the answer)


def split(text: str, markers: Markers = Markers()) -> tuple[Reasoning | None, str]:
    """(trace, answer) of a reply that may carry its trace inline.

    `<think>T</think>A` gives trace T and answer A; `<think>T` that never closes gives trace T, unclosed, and an empty
    answer; `T</think>A` without the start marker (a chat template that opens the block in the prompt, as
    DeepSeek-R1's does) gives trace T. Anything else (a block that is not at the start, no block) has no trace: the
    whole text is the answer.
    """
    body = text.lstrip()
    if body.startswith(markers.start):
        rest = body[len(markers.start):]
        end = rest.find(markers.end)
        if end == -1:
            return Reasoning(rest.strip(), closed=False), ""
        return Reasoning(rest[:end].strip()), rest[end + len(markers.end):].lstrip()
    end = text.find(markers.end)
    if end != -1 and markers.start not in text[:end]:
        return Reasoning(text[:end].strip()), text[end + len(markers.end):].lstrip()
    return None, text


def from_field(trace: str, content: str | None, finish_reason: str | None, tokens: int | None) -> Reasoning:
    """A trace a server returned in its own field. Without an answer, a reply cut at max_tokens ended inside the
    trace (a reasoning parser puts everything in the trace until the end marker comes)."""
    answered = bool(content and content.strip())
    return Reasoning(trace.strip(), tokens, closed=answered or finish_reason != "length")


def estimate_tokens(text: str) -> int:
    """A trace's length when neither the teacher nor the server counted it: characters / 4 (as the rate limiter
    estimates), rounded up."""
    return math.ceil(len(text) / 4)


def trace_column(output: str) -> str:
    return output + TRACE_SUFFIX


def columns(output: str) -> dict[str, str]:
    """The columns a reasoning step produces besides `output`, with their DuckDB types."""
    return {trace_column(output): "VARCHAR", TOKENS_COLUMN: "BIGINT", CLOSED_COLUMN: "BOOLEAN"}


def fields(output: str, reasoning: Reasoning | None) -> dict:
    """A row's reasoning columns (NULL when the reply had no trace)."""
    if reasoning is None:
        return {trace_column(output): None, TOKENS_COLUMN: None, CLOSED_COLUMN: None}
    tokens = reasoning.tokens if reasoning.tokens is not None else estimate_tokens(reasoning.text)
    return {trace_column(output): reasoning.text, TOKENS_COLUMN: tokens, CLOSED_COLUMN: reasoning.closed}


def inline(trace: str, answer: str, markers: Markers = Markers()) -> str:
    """The open-r1 / OpenThoughts convention: `<think>\\n{trace}\\n</think>\\n\\n{answer}`."""
    return f"{markers.start}\n{trace.strip()}\n{markers.end}\n\n{answer}"


def assistant_message(answer: str, trace: str | None, form: str, markers: Markers = Markers()) -> dict:
    """The assistant turn export writes and training trains on: the trace inline (`inline`), in a
    `reasoning_content` field that chat templates of reasoning models render (`field`), or left out (`drop`)."""
    if not trace or form == "drop":
        return {"role": "assistant", "content": answer}
    if form == "field":
        return {"role": "assistant", "content": answer, "reasoning_content": trace}
    return {"role": "assistant", "content": inline(trace, answer, markers)}
