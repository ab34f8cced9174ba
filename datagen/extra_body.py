"""`extra_body`: request fields the spec does not model, sent as is with every request of an HTTP teacher.

`chat_template_kwargs: {enable_thinking: true}`, `reasoning_effort: high`, a provider's thinking budget. A step's
`extra_body` is merged over its teacher's (`merge`: nested mappings key by key, the step's value wins). The merged body
is part of every request's cache key, without its key-like entries (`keyed`): a credential does not decide what the
teacher writes, and a rotated one must not regenerate a step. Key-like values never reach a log, the store or a card
(`masked`, `secret_values`). Keys the spec models itself are refused (`check`) so that one setting has one place.
"""

from __future__ import annotations

import re
from typing import Any

# request fields the spec sets from its own keys; extra_body must not fight them
MODELLED = {
    "model": "the teacher's `model`", "messages": "the step's prompt", "stream": "nothing (replies are read whole)",
    "n": "the step's `n`", "max_tokens": "`sampling.max_tokens`", "temperature": "`sampling.temperature`",
    "top_p": "`sampling.top_p`", "top_k": "`sampling.top_k`", "min_p": "`sampling.min_p`", "seed": "`sampling.seed`",
    "stop": "`sampling.stop`", "presence_penalty": "`sampling.presence_penalty`",
    "frequency_penalty": "`sampling.frequency_penalty`", "repetition_penalty": "`sampling.repetition_penalty`",
    "logprobs": "the step's `logprobs`", "top_logprobs": "the step's `logprobs`",
    "response_format": "the step's `response_format`",
}
# a key whose last word is one of these holds a credential (api_key, access_token, x-api-key, password); a word
# inside a name (thinking_token_budget, max_tokens) does not make it one
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "auth",
                 "authorization", "bearer", "cookie"}
_SECRET_PREFIXES = ("sk-", "sk_", "bearer ", "hf_", "ghp_", "gho_", "xoxb-", "xoxp-", "aiza", "akia")
REDACTED = "[redacted]"


def check(body: dict[str, Any]) -> dict[str, Any]:
    """A spec's extra_body, or ValueError naming the modelled key to use instead."""
    for key in body:
        if key in MODELLED:
            raise ValueError(f"extra_body.{key}: set {MODELLED[key]} instead; extra_body is for request fields the "
                             "spec does not model (chat_template_kwargs, reasoning_effort, provider fields)")
    return body


def merge(base: dict | None, over: dict | None) -> dict | None:
    """`over` merged into `base`: nested mappings key by key, anything else replaced."""
    if not over:
        return dict(base) if base else None
    out = dict(base or {})
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def is_secret(key: Any, value: Any) -> bool:
    words = [w.lower() for w in re.split(r"[_\-\s.]+|(?<=[a-z])(?=[A-Z])", str(key)) if w]
    if words and words[-1] in _SECRET_WORDS:
        return True
    return isinstance(value, str) and value.strip().lower().startswith(_SECRET_PREFIXES)


def _walk(body: Any, on_secret) -> Any:
    if isinstance(body, dict):
        out = {}
        for key, value in body.items():
            if is_secret(key, value) and not isinstance(value, (dict, list)):
                replaced = on_secret(value)
                if replaced is not _DROP:
                    out[key] = replaced
            else:
                out[key] = _walk(value, on_secret)
        return out
    if isinstance(body, list):
        return [_walk(v, on_secret) for v in body]
    return body


_DROP = object()


def keyed(body: dict | None) -> dict | None:
    """What of a body goes into the cache key: everything but key-like entries."""
    return _walk(body, lambda v: _DROP) if body else None


def masked(body: Any) -> Any:
    """The body with key-like values replaced, for anything that is shown or stored."""
    return _walk(body, lambda v: REDACTED) if body else body


def secret_values(body: Any) -> list[str]:
    """The key-like string values in a body (longest first), for redacting error texts."""
    found: list[str] = []
    _walk(body, lambda v: found.append(v) if isinstance(v, str) and len(v) >= 6 else None)
    return sorted(set(found), key=len, reverse=True)
