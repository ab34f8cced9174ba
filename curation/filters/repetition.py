"""`repetition`: the share of a text's word n-grams that repeat an earlier one in the same text.

A generation stuck in a loop ("and then and then and then ...") scores near 1; ordinary prose near 0. This is the
duplicate n-gram measure of Gopher's quality filters (Rae et al., 2021), on occurrences rather than characters.
"""

from __future__ import annotations

from datagen.text import as_text, ngrams, words
from datagen.verdict import Verdict


def repeated_share(text: str, n: int) -> float:
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repetition_filter(spec, rows: list[dict]) -> list[Verdict]:
    out = []
    for row in rows:
        share = repeated_share(as_text(row.get(spec.column)), spec.ngram)
        if share > spec.max_share:
            out.append(Verdict(False, f"{share:.0%} of {spec.ngram}-grams repeat (max_share {spec.max_share:g})",
                               share))
        else:
            out.append(Verdict(True, None, share))
    return out
