"""Semantic dedup in two passes: a static model proposes candidate pairs, the torch model decides.

The static model distilled from MiniLM (datagen/embed/static.py) embeds every row with about a fiftieth of
MiniLM's CPU, but on its own similarity scale, so its verdicts differ from MiniLM's (measured in
tests/bench/curation_levers.py). It is used here only to find the rows that could have a neighbour above the
threshold: those with a static neighbour at or above `candidate_threshold(threshold)`. MiniLM then embeds those rows
alone and the usual keep-first rule runs on its vectors at the spec's threshold; every other row is kept. So each
verdict is MiniLM's, and the cost is the static pass plus MiniLM on the candidate rows.

A pair above the threshold under MiniLM that the static model scores below the candidate threshold is missed (its
later row is kept). On the benchmark's calibration rows every pair at or above 0.92 under MiniLM scored at least
0.94 under the static model; the candidate threshold sits a margin below what was measured (CANDIDATE_OFFSET).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from curation.dedup.semantic import neighbours, semantic_dedup

CANDIDATE_OFFSET = 0.0  # candidate threshold on the static scale = the spec's threshold + this (see the docstring)

EmbedFn = Callable[[list[int], str], np.ndarray]  # (row positions, backend) -> normalised vectors of those rows


def candidate_threshold(threshold: float) -> float:
    return min(threshold + CANDIDATE_OFFSET, 1.0)


def cascade_dedup(n: int, order: list[int], threshold: float, embed: EmbedFn, exact_below: int = 50_000,
                  nprobe: int = 16, seed: int = 0) -> list[tuple]:
    """Verdicts `(kept, index of the kept row it duplicates, cosine)` for n rows, as semantic_dedup gives them."""
    rows = candidates(embed(list(range(n)), "static"), threshold, exact_below, nprobe, seed)
    out: list[tuple] = [(True, None, None)] * n
    if len(rows) == 0:
        return out
    position = {int(r): k for k, r in enumerate(rows)}
    sub_order = [position[i] for i in order if i in position]
    for k, (kept, dup, score) in enumerate(semantic_dedup(embed([int(r) for r in rows], "torch"), sub_order,
                                                          threshold, exact_below, nprobe, seed)):
        out[int(rows[k])] = (kept, None if dup is None else int(rows[dup]), score)
    return out


def candidates(static: np.ndarray, threshold: float, exact_below: int, nprobe: int, seed: int) -> np.ndarray:
    """Sorted positions of the rows with a static neighbour at or above the candidate threshold."""
    near = neighbours(static, candidate_threshold(threshold), exact_below, nprobe, seed, max_neighbors=1)
    return np.array([i for i, (ids, _) in enumerate(near) if len(ids)], dtype=np.int64)
