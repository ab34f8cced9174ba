"""Dedup: exact, MinHash and semantic. Each returns, per row, `(kept, index of the kept row it duplicates, score)`.

All three share one rule for which row of a duplicate group survives: rows are visited best first (by `keep_by`
when the spec sets it, else in input order), and a row is dropped when it duplicates a row already kept. So the kept
row is the group's best, and a chain A~B~C where A and C differ keeps A and C.
"""

from __future__ import annotations

from collections.abc import Callable

from datagen.text import numeric

DedupVerdict = tuple[bool, "int | None", "float | None"]
# (positions of the rows to embed, embedding backend) -> their vectors, embedded (or read from the store) on demand
Vectors = Callable[[list[int], str], object]


def apply_dedup(spec, texts: list[str], order: list[int], vectors: Vectors, seed: int) -> list[DedupVerdict]:
    """Run the dedup a spec entry describes over rows (their `column` texts, visited in `order`)."""
    return DEDUPS[spec.type](spec, texts, order, vectors, seed)


def _exact(spec, texts, order, vectors, seed):
    from curation.dedup.exact import exact_dedup

    return exact_dedup(texts, order)


def _minhash(spec, texts, order, vectors, seed):
    from curation.dedup.minhash import minhash_dedup

    return minhash_dedup(texts, order, spec.threshold, spec.ngram, spec.num_perm)


def _semantic(spec, texts, order, vectors, seed):
    if spec.backend == "cascade":  # the static model proposes, MiniLM decides (specs/curation.md)
        from curation.dedup.cascade import cascade_dedup

        return cascade_dedup(len(texts), order, spec.threshold, vectors, spec.exact_below, spec.nprobe, seed)
    from curation.dedup.semantic import semantic_dedup

    return semantic_dedup(vectors(list(range(len(texts))), "torch"), order, spec.threshold, spec.exact_below,
                          spec.nprobe, seed)


DEDUPS: dict[str, Callable[..., list[DedupVerdict]]] = {"exact": _exact, "minhash": _minhash, "semantic": _semantic}


def priority_order(rows: list[dict], keep_by: str | None, keep: str = "highest") -> list[int]:
    """Row indices best first: by `keep_by` (missing or non-numeric values last), ties in input order."""
    if keep_by is None:
        return list(range(len(rows)))
    sign = -1.0 if keep == "highest" else 1.0

    def key(i: int) -> tuple:
        value = numeric(rows[i].get(keep_by))
        return (value is None, sign * value if value is not None else 0.0, i)

    return sorted(range(len(rows)), key=key)


