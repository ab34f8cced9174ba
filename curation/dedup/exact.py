"""Exact dedup: equal after normalisation (NFKC, case folding, collapsed whitespace), compared by a hash."""

from __future__ import annotations

from datagen.text import normalise, text_hash


def exact_dedup(texts: list[str], order: list[int]) -> list[tuple]:
    out: list[tuple] = [None] * len(texts)  # type: ignore[list-item]
    first: dict[str, int] = {}
    for i in order:
        digest = text_hash(normalise(texts[i]))
        if digest in first:
            out[i] = (False, first[digest], 1.0)
        else:
            first[digest] = i
            out[i] = (True, None, None)
    return out
