"""The one small interface every teacher backend implements.

A teacher takes chat requests that share sampling parameters and streams back, per request, one sample per wanted
key: the text, the finish reason, token counts and (when asked) the top-k log-probabilities of every output token.
A sample that could not be produced comes back with ``error`` set; a teacher never raises for one bad reply, so the
run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from collections.abc import Callable, Iterator

from datagen.reasoning import Markers, Reasoning, split


@dataclass
class TokenLogprobs:
    """One output position: the sampled token and the top-k alternatives (ids are None where a backend gives none)."""

    token: str
    token_id: int | None
    logprob: float
    top_tokens: list[str]
    top_ids: list[int | None]
    top_logprobs: list[float]


@dataclass
class Sample:
    text: str | None
    finish_reason: str | None = None  # "stop" | "length" | backend-specific
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    logprobs: list[TokenLogprobs] | None = None
    error: str | None = None  # set when the sample failed; then text is None
    error_kind: str | None = None  # with `error`: REQUEST or PROVIDER (fault_of_status); None counts as PROVIDER
    seconds: float | None = None
    worker: str | None = None  # which server or engine replica made it
    # the trace, when the server returned one in its own field or GenOptions.reasoning asked to split it off (then
    # `text` is the answer alone)
    reasoning: Reasoning | None = None


@dataclass
class GenRequest:
    """One prompt and the samples wanted from it.

    ``keys`` has one cache key per wanted sample; every sample of one request shares the prompt, so backends with
    parallel sampling (vLLM ``n``) can generate them together and share the prompt's KV cache.
    """

    messages: list[dict[str, str]]
    keys: list[str]
    sample_indices: list[int] = field(default_factory=list)
    # Scoring instead of sampling: the teacher reads this text as the assistant's reply to `messages` (prefill only)
    # and gives back a sample whose text is it, with the top-k log-probabilities (GenOptions.logprobs) at each of
    # its tokens. Backends that cannot score fail the request with the reason.
    continuation: str | None = None


@dataclass
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int = 256
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None


@dataclass
class GenOptions:
    sampling: Sampling
    logprobs: int | None = None  # top-k log-probabilities per output token
    logprobs_mode: str = "raw"  # raw: the model's distribution; processed: after temperature, top-k and top-p
    json_schema: dict[str, Any] | None = None  # structured output
    reasoning: Markers | None = None  # split a leading trace off the text (Sample.reasoning)
    thinking: Any = None  # a thinking.ThinkingBudget: budget forcing of the trace (in-process engines; with `reasoning`)
    extra_body: dict[str, Any] | None = None  # HTTP only: merged into every request body as is
    tools: list[dict[str, Any]] | None = None  # OpenAI-shape tool definitions the model may call (toolcalls.py)


# Whose fault a failed sample is. A request fault (a 400, a reply that does not parse, a refusal) would fail the same
# way if asked again, so a re-run leaves it failed unless `--retry-failed`. A provider fault (a rate limit past
# rate_limit_wait_s, 5xx, timeouts, dropped connections, a truncated body, a server down past down_limit_s, an expired
# batch) says nothing about the request: a re-run asks again.
REQUEST = "request"
PROVIDER = "provider"
# 4xx statuses that are not the request's fault: credentials, access, an unknown model or endpoint (fixed outside
# the request, then a re-run should ask again), and the ones that mean "try again later"
PROVIDER_4XX = {401, 402, 403, 404, 408, 409, 425, 429}


def fault_of_status(status: int) -> str:
    """REQUEST for an HTTP status that refuses the request itself (400, 413, 422, ...), else PROVIDER."""
    return REQUEST if 400 <= status < 500 and status not in PROVIDER_4XX else PROVIDER


WAIT = object()  # what a request feed answers when it has nothing yet but more may come (an engine replica's inbox)

Finished = list[tuple[int, list[Sample]]]  # (index into the requests, one Sample per key) for each finished request


class Teacher(Protocol):
    name: str

    def stream(self, requests: list[GenRequest], options: GenOptions) -> Iterator[Finished]:
        """Generate every request, yielding what finished since the last yield (possibly nothing) at least every
        second or so, so the caller can commit as it goes. Every request comes back exactly once. Closing the
        iterator early (Ctrl-C, the caller's error) cancels what is in flight."""
        ...

    def start(self) -> bool:
        """Load the model or start the engine now (the first request would otherwise); True if that took work."""
        ...

    def close(self) -> None: ...


def split_sample(sample: Sample, markers: Markers, count: Callable[[str], int] | None = None) -> None:
    """Split a finished sample's inline trace off its text (in place); `count` is the teacher's token counter."""
    if sample.error is not None or sample.reasoning is not None:
        return
    reasoning, sample.text = split(sample.text or "", markers)
    if reasoning is not None and count is not None:
        reasoning.tokens = count(reasoning.text)
    sample.reasoning = reasoning


def generate_all(teacher: Teacher, requests: list[GenRequest], options: GenOptions) -> list[list[Sample]]:
    """All of a stream at once: for each request, its samples (for callers that need no streaming)."""
    results: list[list[Sample] | None] = [None] * len(requests)
    for finished in teacher.stream(requests, options):
        for i, samples in finished:
            results[i] = samples
    return results  # type: ignore[return-value]
