"""Generation as a stream: send requests to a teacher, commit finished samples to the store as they arrive.

The teacher keeps its backend busy (an engine's queue full, HTTP requests in flight up to the concurrency) and
yields each request as it finishes; this module turns replies into rows (through the caller's `parse`) and commits
them every COMMIT_SECONDS, in one transaction each time. Ctrl-C, SIGTERM or an error stops the stream: what finished
is committed first, so a re-run generates only the rest. `kill -9` loses only what was not yet committed.
Under a spend cap (spendcap.py) requests go out in parts that fit under the cap at their worst-case cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable

import duckdb

from datagen.pipeline.spendcap import SpendCap
from datagen.pipeline.cost import Rates, max_request_cost
from datagen.keys import canonical
from datagen.store.writes import BatchResult, write_batch
from datagen.teachers.base import PROVIDER, REQUEST, GenOptions, GenRequest, Sample, Sampling

COMMIT_SECONDS = 2.0

# (request, sample) -> produced fields and None, or None and the reason the reply is unusable
Parse = Callable[[object, Sample], tuple[dict | None, str | None]]


@dataclass
class Counts:
    generated: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0


def options_for(step, sampling: dict, json_schema: dict | None, tools: list[dict] | None = None) -> GenOptions:
    """What a step asks of its teacher besides the prompts: sampling, logprobs, schema, the trace markers and
    thinking budget (specs/reasoning.md) and the step's extra_body (merged over the teacher's by the teacher)."""
    from datagen.reasoning import Markers
    from datagen.spec.reasoning_models import markers_of
    from datagen.teachers.thinking import ThinkingBudget

    markers = markers_of(step)
    thinking = step.thinking_budget()
    forcing = None
    if thinking is not None:
        forcing = ThinkingBudget(thinking.max_tokens, thinking.min_tokens or None, markers.start, markers.end, thinking.wait,
                        thinking.final, sampling["max_tokens"])
    return GenOptions(Sampling(**sampling), logprobs=step.logprobs, logprobs_mode=step.logprobs_mode,
                      json_schema=json_schema,
                      reasoning=Markers(markers.start, markers.end) if markers else None, thinking=forcing,
                      extra_body=step.extra_body, tools=tools or None)


def group_by_prompt(requests: list) -> list[tuple[GenRequest, list]]:
    """One GenRequest per prompt with all its missing samples, ordered so shared prefixes run together."""
    groups: dict[str, list] = {}
    for r in requests:
        groups.setdefault(canonical([r.parent_id, r.messages, r.continuation]), []).append(r)
    ordered = sorted(groups.values(), key=lambda rs: canonical(rs[0].messages))
    return [(GenRequest(rs[0].messages, [r.key for r in rs], [r.sample_index for r in rs], rs[0].continuation), rs)
            for rs in ordered]


def stream_into_store(con: duckdb.DuckDBPyConnection, teacher, teacher_name: str, todo: list, options: GenOptions,
             parse: Parse, counts: Counts, on_commit: Callable[[], None] | None = None, rates: Rates | None = None,
             cap: SpendCap | None = None) -> None:
    """Generate `todo` (planned requests of one teacher) and record every sample: a row, or a failed request with
    its reason, with its cost at `rates`. Commits at least every COMMIT_SECONDS while samples arrive, and once more
    when the stream ends, for whatever reason it ends. With a spend `cap` (and a known price), only what fits under the
    cap at its worst case is sent; the rest raises BudgetExhausted once what was sent is in."""
    if not todo:
        return
    groups = group_by_prompt(todo)
    if cap is None or rates is None:
        _stream(con, teacher, teacher_name, groups, options, parse, counts, on_commit, rates)
        return
    worst = [max_request_cost(rates, g.messages, len(g.keys), options.sampling.max_tokens) for g, _ in groups]
    while groups:
        n = cap.admit(worst)
        if n == 0:
            raise cap.exhausted(groups[0][1][0].step, sum(len(rs) for _, rs in groups), sum(worst))
        # an admitted part runs to its end, and what it did not spend of its reservation admits the next part
        spent = _stream(con, teacher, teacher_name, groups[:n], options, parse, counts, on_commit, rates)
        cap.settle(sum(worst[:n]), spent)
        groups, worst = groups[n:], worst[n:]


def _stream(con, teacher, teacher_name: str, groups: list, options: GenOptions, parse: Parse, counts: Counts,
            on_commit: Callable[[], None] | None, rates: Rates | None) -> float:
    """Stream these prompt groups through the teacher and record them; returns what they cost."""
    result = BatchResult()
    last = last_finish = time.monotonic()
    spent = 0.0
    stream = teacher.stream([g for g, _ in groups], options)
    try:
        for finished in stream:
            # every sample gets its share of the wall time since the last finish, whatever the backend, so a step's
            # `seconds` add up to its generation time however many requests overlapped: the run table,
            # `requests.seconds`, the card and the report show one figure
            now, arrived = time.monotonic(), sum(len(samples) for _, samples in finished)
            share = (now - last_finish) / arrived if arrived else 0.0
            last_finish = now if arrived else last_finish
            for i, samples in finished:
                for req, sample in zip(groups[i][1], samples):
                    sample.seconds = share
                    spent += _record(result, req, sample, teacher_name, parse, counts, rates)
            if result.requests and time.monotonic() - last >= COMMIT_SECONDS:
                write_batch(con, result)
                result, last = BatchResult(), time.monotonic()
                if on_commit:
                    on_commit()
        if result.requests:
            write_batch(con, result)
            result = BatchResult()
            if on_commit:
                on_commit()
    finally:
        try:
            if result.requests:  # stopped early (Ctrl-C, SIGTERM, an error): keep what finished
                write_batch(con, result)
        finally:
            stream.close()  # a stream stopped early cancels what it has in flight
    return spent


def _record(result: BatchResult, req, sample: Sample, teacher_name: str, parse: Parse, counts: Counts,
            rates: Rates | None) -> float:
    counts.prompt_tokens += sample.prompt_tokens or 0
    counts.completion_tokens += sample.completion_tokens or 0
    counts.seconds += sample.seconds or 0.0
    # a reply that does not parse was still paid for
    cost = rates.cost(sample.prompt_tokens, sample.completion_tokens) if rates is not None else None
    counts.cost_usd += cost or 0.0
    if sample.error is not None:
        counts.failed += 1
        result.add_failure(req.key, sample.error, sample, cost, sample.error_kind or PROVIDER)
        return cost or 0.0
    fields, error = parse(req, sample)
    if error is not None:  # the reply came, and does not parse: asked again, it would most likely fail again
        counts.failed += 1
        result.add_failure(req.key, error, sample, cost, REQUEST)
        return cost or 0.0
    counts.generated += 1
    result.add_row(req, sample, {**req.fields, **fields}, teacher_name, cost)
    return cost or 0.0
