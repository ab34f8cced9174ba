"""Filters: each is a function from rows to one `Verdict` per row (kept, reason, score).

The runner (curation/run.py), not the filter, counts and records the verdicts as `decisions` rows. A reason is set
for dropped rows (why) and may be set for kept ones; the score is whatever number the filter measured (a token count,
a repeated share, 1.0 for a verified answer), so `decisions` can be queried for near misses.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from datagen.verdict import Verdict


def apply_filter(spec: Any, rows: list[dict], spec_dir=None) -> list[Verdict]:
    """Run the filter a spec entry describes over rows (each a dict of the input's columns)."""
    return _FILTERS[spec.type](spec, rows, spec_dir)


def _length(spec, rows, spec_dir):
    from curation.filters.length import length_filter

    return length_filter(spec, rows, spec_dir)


def _regex(spec, rows, spec_dir):
    from curation.filters.simple import regex_filter

    return regex_filter(spec, rows)


def _truncated(spec, rows, spec_dir):
    from curation.filters.simple import truncated_filter

    return truncated_filter(spec, rows)


def _score(spec, rows, spec_dir):
    from curation.filters.simple import score_filter

    return score_filter(spec, rows)


def _repetition(spec, rows, spec_dir):
    from curation.filters.repetition import repetition_filter

    return repetition_filter(spec, rows)


def _verify_math(spec, rows, spec_dir):
    from curation.filters.verify_math import verify_math_filter

    return verify_math_filter(spec, rows)


def _verify_code(spec, rows, spec_dir):
    from curation.filters.verify_code import verify_code_filter

    return verify_code_filter(spec, rows)


def _reasoning(spec, rows, spec_dir):
    from curation.filters.reasoning import reasoning_filter

    return reasoning_filter(spec, rows)


def _trajectory(spec, rows, spec_dir):
    from curation.filters.trajectory import trajectory_filter

    return trajectory_filter(spec, rows)


_FILTERS: dict[str, Callable[..., list[Verdict]]] = {
    "length": _length, "regex": _regex, "truncated": _truncated, "score": _score, "repetition": _repetition,
    "verify_math": _verify_math, "verify_code": _verify_code, "reasoning": _reasoning, "trajectory": _trajectory,
}


def add(model, fn: Callable[..., list[Verdict]]) -> None:
    """Register a filter (CONTRIBUTING.md, "Adding a filter"): `model` (a FilterBase subclass with
    `type: Literal["name"]`) joins the spec language, and `fn(spec, rows, spec_dir)` gives one Verdict per row."""
    from datagen.spec.curation_models import register_filter

    _FILTERS[register_filter(model)] = fn
