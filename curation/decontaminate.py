"""Decontamination: drop rows that share a word n-gram with a benchmark, recording the n-gram and the benchmark row.

Texts are compared as lower-cased word sequences with punctuation dropped (the usual n-gram overlap test of GPT-3 and
its successors; 8 words is a common middle ground between 13, which misses paraphrases, and short n-grams, which
match common phrases). A text shorter than n words has no n-grams and is never flagged.
"""

from __future__ import annotations

from datagen.text import as_text, ngrams, words
from datagen.verdict import Verdict


def benchmark_index(rows: list[tuple[str, str]], n: int) -> dict[str, str]:
    """Every n-gram of the benchmark texts -> the id of the first benchmark row that has it."""
    index: dict[str, str] = {}
    for row_id, text in rows:
        for gram in ngrams(words(as_text(text)), n):
            index.setdefault(gram, row_id)
    return index


def decontaminate(texts: list[str], index: dict[str, str], n: int, source: str) -> list[Verdict]:
    out = []
    for text in texts:
        hit = next((g for g in ngrams(words(text), n) if g in index), None)
        if hit is None:
            out.append(Verdict(True, None, None))
        else:
            out.append(Verdict(False, f"shares {n}-gram {hit!r} with {source} row {index[hit]}", None))
    return out
