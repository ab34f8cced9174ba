"""Dedup: exact, MinHash and semantic. Each returns, per row, `(kept, index of the kept row it duplicates, score)`.

All three share one rule for which row of a duplicate group survives: rows are visited best first (by `keep_by`
when the spec sets it, else in input order), and a row is dropped when it duplicates a row already kept. So the kept
row is the group's best, and a chain A~B~C where A and C differ keeps A and C.
"""

from __future__ import annotations

from datagen.text import numeric

DedupVerdict = tuple[bool, "int | None", "float | None"]


def priority_order(rows: list[dict], keep_by: str | None, keep: str = "highest") -> list[int]:
    """Row indices best first: by `keep_by` (missing or non-numeric values last), ties in input order."""
    if keep_by is None:
        return list(range(len(rows)))
    sign = -1.0 if keep == "highest" else 1.0

    def key(i: int) -> tuple:
        value = numeric(rows[i].get(keep_by))
        return (value is None, sign * value if value is not None else 0.0, i)

    return sorted(range(len(rows)), key=key)


