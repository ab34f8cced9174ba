"""Cache keys and row ids.

A request's key hashes what determines its output: the step, the input row, the rendered messages, the teacher's
identity, the sampling parameters, the response schema, `logprobs` and the sample index. Throughput settings
(concurrency, batch sizes, rate limits) are left out on purpose, so changing them never regenerates anything.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(*, step: str, parent_id: str | None, messages: list[dict], teacher: dict, sampling: dict,
                json_schema: dict | None, logprobs: int | list | None, sample_index: int,
                extra: dict | None = None) -> str:
    """`extra` adds what else tells two requests apart (an expansion's round and index, a teacher's name in a list);
    it is left out when None, so keys of steps that do not use it never change."""
    payload = {
        "step": step,
        "parent": parent_id,
        "messages": messages,
        "teacher": teacher,
        "sampling": {k: v for k, v in sampling.items() if v is not None},
        "schema": json_schema,
        "logprobs": logprobs,
        "sample": sample_index,
    }
    if extra is not None:
        payload["extra"] = extra
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


def logprobs_key(step) -> int | list | None:
    """What `logprobs` adds to a step's keys: K, or [K, "processed"] when the step keeps processed logprobs (so the
    keys of steps that keep raw ones, the default, never change)."""
    if step.logprobs and step.logprobs_mode != "raw":
        return [step.logprobs, step.logprobs_mode]
    return step.logprobs


def row_id(key: str) -> str:
    return hashlib.sha256(b"row\0" + key.encode()).hexdigest()[:20]
