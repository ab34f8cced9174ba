"""The one small interface every teacher backend implements.

A teacher takes chat requests that share sampling parameters and returns, per requested sample, the text, the finish
reason, token counts and (when asked) the top-k log-probabilities of every output token. A sample that could not be
produced is returned with ``error`` set; it never raises for one bad reply, so the run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


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
    seconds: float | None = None


@dataclass
class GenRequest:
    """One prompt and the samples wanted from it.

    ``keys`` has one cache key per wanted sample; every sample of one request shares the prompt, so backends with
    parallel sampling (vLLM ``n``) can generate them together and share the prompt's KV cache.
    """

    messages: list[dict[str, str]]
    keys: list[str]
    sample_indices: list[int] = field(default_factory=list)


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
    json_schema: dict[str, Any] | None = None  # structured output


class Teacher(Protocol):
    name: str

    def generate(self, requests: list[GenRequest], options: GenOptions) -> list[list[Sample]]:
        """Return, for each request, one Sample per key, in order."""
        ...

    def close(self) -> None: ...


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during `generate`: in-flight requests were cancelled; `partial` holds, per request and key, the samples
    that had finished (None where a sample had not), so the run loop can keep them before it stops."""

    def __init__(self, partial: list[list[Sample | None]]):
        super().__init__()
        self.partial = partial
