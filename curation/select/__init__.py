"""Selection to `n` rows by quality, difficulty and diversity, as s1 chose its 1,000 questions.

1. Rank: each given criterion (quality: a score column; difficulty by length: the length of a column) becomes a
   percentile rank in [0, 1]; a row's priority is their mean. Without criteria every row has priority 0 and input
   order decides.
2. Choose: without `diversity`, the n rows of highest priority. With `kcenter`, greedy farthest-point selection on
   embeddings, starting from the best row, among the best `pool * n` rows when a criterion is given (else all rows).
   With `cluster`, s1's stratified sampling over k-means clusters or over a column's values.

Deterministic for a seed. `embed(column, model, indices)` supplies normalised vectors of those rows' `column`
(from the store's cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

from curation.select.diversity import default_clusters, kcenter, kmeans_labels, stratified
from curation.select.quality import length, length_ranks, quality_ranks
from datagen.text import as_text

Embed = Callable[[str, str, list[int]], np.ndarray]


@dataclass
class Selection:
    chosen: list[int]  # indices into the rows, in selection order
    priority: np.ndarray  # per row
    notes: dict[int, str] = field(default_factory=dict)  # per chosen row, how it was chosen


def priorities(spec, rows: list[dict]) -> np.ndarray:
    parts = []
    if spec.quality is not None:
        parts.append(quality_ranks(rows, spec.quality.column, spec.quality.order))
    if spec.difficulty is not None:
        parts.append(length_ranks(rows, spec.difficulty.column))
    return np.mean(parts, axis=0) if parts else np.zeros(len(rows))


def select(spec, rows: list[dict], seed: int, embed: Embed) -> Selection:
    priority = priorities(spec, rows)
    ranked = sorted(range(len(rows)), key=lambda i: (-priority[i], i))
    div = spec.diversity
    if div is None:
        chosen = ranked[: spec.n]
        return Selection(chosen, priority, {i: f"priority {priority[i]:.3f}" for i in chosen})
    if div.method == "kcenter":
        has_rank = spec.quality is not None or spec.difficulty is not None
        pool = ranked[: int(math.ceil(div.pool * spec.n))] if has_rank else ranked
        vectors = embed(div.column, div.model, pool)
        picks, gaps = kcenter(vectors, spec.n)
        chosen = [pool[p] for p in picks]
        notes = {pool[p]: f"kcenter pick {k + 1}, cosine distance {g:.3f} to the nearest earlier pick" if k else
                 "kcenter pick 1, the best-ranked row" for k, (p, g) in enumerate(zip(picks, gaps))}
        return Selection(chosen, priority, notes)
    ordered = [rows[i] for i in ranked]
    if div.by_column is not None:
        groups = [as_text(r.get(div.by_column)) for r in ordered]
    else:
        k = div.clusters or default_clusters(len(ordered), spec.n)
        groups = [int(x) for x in kmeans_labels(embed(div.column, div.model, ranked), k, seed)]
    lengths = None
    if div.weight_by_length:
        column = div.length_column or spec.difficulty.column
        lengths = [length(r.get(column)) or 0.0 for r in ordered]
    picks = stratified(groups, spec.n, seed, lengths)
    chosen = [ranked[p] for p in picks]
    notes = {ranked[p]: f"group {groups[p]}, pick {k + 1}" for k, p in enumerate(picks)}
    return Selection(chosen, priority, notes)
