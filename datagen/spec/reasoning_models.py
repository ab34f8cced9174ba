"""Spec models for reasoning distillation (specs/reasoning.md): a step's `reasoning` markers and `thinking` budget,
and `extra_body`, the request fields an HTTP teacher sends as they are."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from datagen import extra_body
from datagen.spec.cost_models import HTTP_BACKENDS


class Model(BaseModel):
    # the same rules as datagen.spec.models.Model; defined here so the two modules do not import each other
    model_config = ConfigDict(extra="forbid")


class ReasoningSpec(Model):
    """`reasoning: {start, end}`: the markers of a trace written inline (`reasoning: true` takes the defaults)."""

    start: str = Field("<think>", min_length=1)
    end: str = Field("</think>", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> ReasoningSpec:
        if self.start == self.end:
            raise ValueError(f"reasoning start and end markers must differ, both are {self.start!r}")
        return self


class ThinkingSpec(Model):
    """`thinking:` s1 budget forcing of the trace while generating (in-process engines only)."""

    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0)
    wait: str = Field("Wait", min_length=1)
    final: str = "\nFinal answer:"

    @model_validator(mode="after")
    def _bounds(self) -> ThinkingSpec:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"thinking.min_tokens ({self.min_tokens}) must not exceed thinking.max_tokens "
                             f"({self.max_tokens})")
        return self


def markers_of(step) -> ReasoningSpec | None:
    """A step's trace markers, or None when it keeps no trace."""
    return step.trace_markers()


def _check_extra_body(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return extra_body.check(value) if value is not None else None


# a teacher's or step's extra_body: checked, and with key-like values masked in every dump (the store's `_runs`)
ExtraBody = Annotated[dict[str, Any] | None, AfterValidator(_check_extra_body), PlainSerializer(extra_body.masked)]


def check_step(loaded, i: int, step, teacher_names: list[str]) -> None:
    """What a step's `extra_body`, `logprobs_mode`, `reasoning` and `thinking` need of its teachers (any
    strategy)."""
    loc = ("steps", i)
    backends = {name: loaded.spec.teachers[name].backend for name in teacher_names}
    if step.logprobs_mode == "processed":
        if not step.logprobs:
            raise loaded.error(loc + ("logprobs_mode",), "logprobs_mode says which log-probabilities `logprobs` "
                                                         "keeps; add `logprobs: K` (e.g. 10) or remove it")
        remote = [n for n, b in backends.items() if b in HTTP_BACKENDS]
        if remote:
            raise loaded.error(loc + ("logprobs_mode",), f"teacher `{remote[0]}` is an HTTP server, whose logprobs "
                                                         "are what the server computes; remove logprobs_mode and "
                                                         "start the server with `--logprobs-mode processed_logprobs` "
                                                         "(vllm serve) if that is what you want")
    if step.extra_body is not None:
        local = [n for n, b in backends.items() if b not in HTTP_BACKENDS]
        if local:
            raise loaded.error(loc + ("extra_body",), f"extra_body is sent to an HTTP server, and teacher `{local[0]}` "
                                                      f"is an in-process `{backends[local[0]]}` engine; remove it or "
                                                      "use a `backend: openai` or `anthropic` teacher")
    thinking = step.thinking_budget()
    if thinking is None:
        return
    at = loc + ("thinking",)
    if not markers_of(step):
        raise loaded.error(at, "thinking budgets a reasoning trace: add `reasoning: true` (the trace goes to "
                               f"`{step.output}_reasoning`, the answer to `{step.output}`)")
    remote = [n for n, b in backends.items() if b in HTTP_BACKENDS]
    if backends.get(remote[0] if remote else None) == "anthropic":
        raise loaded.error(at, f"thinking (budget forcing) runs only on in-process engines, and teacher `{remote[0]}` "
                               "is Anthropic's API; remove the step's `thinking` and set the teacher's own "
                               "`thinking: {budget_tokens: 2048}` (extended thinking) instead")
    if remote:
        raise loaded.error(at, f"thinking (budget forcing) runs only on in-process engines, and teacher `{remote[0]}` "
                               "is an HTTP server; remove `thinking` and pass the server's own budget fields with "
                               "`extra_body` instead, e.g. `extra_body: {reasoning_effort: low}` (OpenAI-style APIs), "
                               "`{thinking_token_budget: 1024}` (vllm serve with --reasoning-parser), or your "
                               "provider's field")
    if step.logprobs:
        raise loaded.error(at, "thinking builds each reply from several generations, so its logprobs would not be "
                               "one sequence's; remove `logprobs` or `thinking`")
