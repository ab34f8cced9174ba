"""Anthropic's Messages API (`POST {base_url}/messages`) as a teacher, over httpx.

It is the OpenAI teacher with another body and reply (a subclass overriding `payload` and `parse`), so everything a
hosted API needs is the same code: one HTTP request per sample, the adaptive concurrency window and pace, 429s that
cost time and never a row (`Retry-After` honoured), the circuit breaker for a server that is down (529 "overloaded"
counts as down), `max_attempts` for other faults, the key scrubbed from every error, Ctrl-C that cancels at once.

The request: the chat's system messages become `system`; `max_tokens`, `stop_sequences`, `temperature`, `top_p`
(only below 1: newer models refuse it beside temperature) and `top_k`; with `thinking`, extended thinking
(`{type: enabled, budget_tokens}`), which the API takes only at its own temperature, so none is sent then. The key
goes in `x-api-key`, never in the store or a log. The reply: its text blocks are the text, its thinking blocks the
reasoning trace (Sample.reasoning; a step with `reasoning: true` keeps it), `stop_reason` the finish reason
(`end_turn` and `stop_sequence` are "stop", `max_tokens` is "length"), `usage` the token counts (cache reads and
writes count as prompt tokens). A `refusal` is a failed request by its own fault (not asked again on a re-run
unless --retry-failed).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from datagen import extra_body as bodies
from datagen.reasoning import from_field
from datagen.teachers.base import PROVIDER, REQUEST, GenOptions, GenRequest, Sample
from datagen.teachers.openai_teacher import OpenAITeacher

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def headers(api_key: str | None, version: str) -> dict[str, str]:
    out = {"anthropic-version": version}
    if api_key:
        out["x-api-key"] = api_key
    return out


class AnthropicTeacher(OpenAITeacher):
    ENDPOINT = "/messages"

    def __init__(self, name: str, *, api_key: str | None, anthropic_version: str = "2023-06-01",
                 thinking: dict | None = None, **client):
        """`client`: the OpenAI teacher's keywords (base_url, model, max_concurrency, timeout_s, max_attempts,
        requests_per_minute, tokens_per_minute, rate_limit_wait_s, adaptive_rate, down_limit_s, extra_body)."""
        super().__init__(name, api_key=api_key, **client)
        self._headers = headers(api_key, anthropic_version)
        self.thinking = thinking

    def payload(self, req: GenRequest, sample_index: int, options: GenOptions) -> dict[str, Any]:
        s = options.sampling
        system = "\n\n".join(m["content"] for m in req.messages if m.get("role") == "system" and m.get("content"))
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in req.messages
                    if m.get("role") != "system"]
        body: dict[str, Any] = {"model": self.model, "max_tokens": s.max_tokens, "messages": messages}
        if system:
            body["system"] = system
        if s.stop:
            body["stop_sequences"] = list(s.stop)
        if self.thinking:
            body["thinking"] = {"type": "enabled", "budget_tokens": self.thinking["budget_tokens"]}
        else:
            if s.temperature is not None:
                body["temperature"] = s.temperature
            if s.top_k is not None and s.top_k > 0:
                body["top_k"] = s.top_k
        if s.top_p is not None and s.top_p < 1:
            body["top_p"] = s.top_p
        body.update(bodies.merge(self.extra_body, options.extra_body) or {})
        return body

    def parse(self, resp: httpx.Response, options: GenOptions) -> Sample:
        try:
            data = resp.json()
        except json.JSONDecodeError as exc:  # a body cut off on the way: the provider's fault, asked again
            return Sample(text=None, error=f"malformed reply ({type(exc).__name__}): {resp.text[:200]!r}",
                          error_kind=PROVIDER)
        return parse_message(data, resp.text)


def parse_message(data, raw: str) -> Sample:
    """A Messages API reply (a dict) as a Sample; `raw` is shown when it is not one. Batch results carry the same."""
    try:
        blocks = data["content"]
        stop = data.get("stop_reason")
        text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        trace = "\n\n".join(b["thinking"] for b in blocks if b.get("type") == "thinking")
    except (KeyError, TypeError, AttributeError) as exc:
        return Sample(text=None, error=f"malformed reply ({type(exc).__name__}): {raw[:200]!r}", error_kind=PROVIDER)
    if stop == "refusal":  # the model declined: asked again, it would most likely decline again
        return Sample(text=None, error=f"refused (stop_reason refusal): {text[:200]!r}", error_kind=REQUEST)
    usage = data.get("usage") or {}
    prompt = [usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")]
    finish = FINISH.get(stop, stop)
    return Sample(
        text=text,
        finish_reason=finish,
        prompt_tokens=sum(n for n in prompt if n) if prompt[0] is not None else None,
        completion_tokens=usage.get("output_tokens"),  # thinking included: it is billed as output
        reasoning=from_field(trace, text, finish, None) if trace else None,
    )
