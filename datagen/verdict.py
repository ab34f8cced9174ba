"""One verdict type for every keep-or-drop decision: filters, dedup, decontamination, selection, novelty, votes.

The store writes each verdict as one `decisions` row; the stage that made it decides, never the store.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    kept: bool
    reason: str | None = None  # why a row was dropped (and, where useful, why it was kept)
    score: float | None = None  # what the stage measured: a token count, a similarity, an agreement share
    duplicate_of: str | None = None  # the `_id` of the kept row this one duplicates or lost to


def keep(reason: str | None = None, score: float | None = None) -> Verdict:
    return Verdict(True, reason, score)


def drop(reason: str, score: float | None = None, duplicate_of: str | None = None) -> Verdict:
    return Verdict(False, reason, score, duplicate_of)
