"""Diversity: k-center (greedy farthest point) on embeddings, and stratified sampling over groups (s1).

Both are deterministic for a seed: k-center has no randomness (ties go to the better-ranked row), k-means is seeded,
and group sampling draws from numpy's generator seeded with the curation seed.
"""

from __future__ import annotations

import math

import numpy as np


def kcenter(vectors: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """Greedy farthest-point selection of n rows (a 2-approximation of k-center).

    Starts from row 0 (the caller orders rows best first) and then repeatedly takes the row whose cosine distance to
    its nearest chosen row is largest. One pass over the vectors per pick: O(n * picks * dim) time, O(n) memory.
    Returns the picked indices and, for each, its distance to the nearest earlier pick (0 for the first).
    """
    total = len(vectors)
    if total == 0 or n <= 0:
        return [], []
    picks, gaps = [0], [0.0]
    nearest = 1.0 - vectors @ vectors[0]
    nearest[0] = -np.inf
    while len(picks) < min(n, total):
        i = int(np.argmax(nearest))  # the first maximum: ties go to the better-ranked row
        picks.append(i)
        gaps.append(float(nearest[i]))
        np.minimum(nearest, 1.0 - vectors @ vectors[i], out=nearest)
        nearest[picks] = -np.inf
    return picks, gaps


def kmeans_labels(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """faiss k-means cluster of each row (k is capped at the number of rows)."""
    import faiss

    k = max(1, min(k, len(vectors)))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(vectors.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(vectors)
    _, labels = km.index.search(vectors, 1)
    return labels[:, 0]


def default_clusters(rows: int, n: int) -> int:
    return max(1, min(n, int(math.ceil(math.sqrt(rows)))))


def stratified(groups: list, n: int, seed: int, lengths: list[float] | None = None) -> list[int]:
    """s1's diversity sampling: repeatedly pick a group uniformly at random, then a row from it.

    `groups[i]` is row i's group; rows are assumed ordered best first. Within a group the pick is its best remaining
    row, or, with `lengths`, a row drawn with weight 2^-rank where rank 0 is the longest remaining row.
    """
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    if lengths is not None:
        for key in members:
            members[key].sort(key=lambda i: (-lengths[i], i))
    keys = sorted(members)
    chosen: list[int] = []
    while keys and len(chosen) < n:
        key = keys[int(rng.integers(len(keys)))]
        pool = members[key]
        if lengths is None:
            pos = 0
        else:
            weights = np.exp2(-np.arange(len(pool), dtype=float))
            pos = int(rng.choice(len(pool), p=weights / weights.sum()))
        chosen.append(pool.pop(pos))
        if not pool:
            keys.remove(key)
    return chosen
