"""Spec models for what a run costs: a teacher's `price`, its provider `batch` API, and the spec's `budget`
(specs/cost.md)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


# the backends that are a provider's server (priced by the provider, with a batch API where it has one): no local
# weights or tokenizer, a key from the environment, requests over the network
HTTP_BACKENDS = ("openai", "anthropic")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriceSpec(_Model):
    """USD per million tokens, as providers list them."""

    input: float = Field(ge=0, le=10_000)
    output: float = Field(ge=0, le=10_000)


class BatchSpec(_Model):
    """A provider's batch API (OpenAI's Files and Batches endpoints, which other providers copy)."""

    enabled: bool = False
    completion_window: str = "24h"
    poll_seconds: float = Field(30, gt=0, le=3600)
    max_requests_per_batch: int = Field(50_000, ge=1, le=50_000)
    max_file_mb: float = Field(200, gt=0, le=10_000)  # OpenAI refuses input files over 200 MB

    @field_validator("completion_window")
    @classmethod
    def _window(cls, v: str) -> str:
        if not re.match(r"^[1-9][0-9]*h$", v):
            raise ValueError(f"completion_window is hours with an `h`, as the provider takes it (e.g. 24h), got {v!r}")
        return v


class AnthropicBatchSpec(_Model):
    """Anthropic's Message Batches API: at most 100,000 requests or 256 MB a batch, each batch ends within 24 h."""

    enabled: bool = False
    poll_seconds: float = Field(30, gt=0, le=3600)
    max_requests_per_batch: int = Field(100_000, ge=1, le=100_000)
    max_batch_mb: float = Field(256, gt=0, le=256)


class BudgetSpec(_Model):
    max_usd: float = Field(gt=0)
