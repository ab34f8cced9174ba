"""The filters that look at one cell and need no library: `truncated`, `regex`, `score`."""

from __future__ import annotations

import re

from datagen.text import as_text, numeric
from datagen.verdict import Verdict


def truncated_filter(spec, rows: list[dict]) -> list[Verdict]:
    """Drop rows the teacher cut off at max_tokens. (A failed request never made a row, so it cannot reach here.)"""
    out = []
    for row in rows:
        reason = row.get("_finish_reason")
        if reason == "length":
            out.append(Verdict(False, "truncated: finish reason is `length` (raise max_tokens to keep such rows)"))
        else:
            out.append(Verdict(True, None, None))
    return out


def regex_filter(spec, rows: list[dict]) -> list[Verdict]:
    flags = re.IGNORECASE if spec.ignore_case else 0
    must = re.compile(spec.must_match, flags) if spec.must_match is not None else None
    must_not = re.compile(spec.must_not_match, flags) if spec.must_not_match is not None else None
    out = []
    for row in rows:
        text = as_text(row.get(spec.column))
        if must is not None and not must.search(text):
            out.append(Verdict(False, f"no match for must_match {spec.must_match!r}", None))
            continue
        found = must_not.search(text) if must_not is not None else None
        if found:
            out.append(Verdict(False, f"must_not_match {spec.must_not_match!r} matched {found.group(0)[:60]!r}", None))
            continue
        out.append(Verdict(True, None, None))
    return out


def score_filter(spec, rows: list[dict]) -> list[Verdict]:
    out = []
    for row in rows:
        value = numeric(row.get(spec.column))
        if value is None:
            out.append(Verdict(False, f"no numeric {spec.column} (got {row.get(spec.column)!r})", None))
        elif spec.min is not None and value < spec.min:
            out.append(Verdict(False, f"{spec.column} {value:g} < min {spec.min:g}", value))
        elif spec.max is not None and value > spec.max:
            out.append(Verdict(False, f"{spec.column} {value:g} > max {spec.max:g}", value))
        else:
            out.append(Verdict(True, None, value))
    return out


