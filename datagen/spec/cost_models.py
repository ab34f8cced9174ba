"""Spec models for what a run costs: a teacher's `price`, its provider `batch` API, and the spec's `budget`
(specs/cost.md)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class BudgetSpec(_Model):
    max_usd: float = Field(gt=0)
