"""Diversity: k-center (greedy farthest point) on embeddings, and stratified sampling over groups (s1).

Both are deterministic for a seed: k-center has no randomness (ties go to the better-ranked row), k-means is seeded,
and group sampling draws from numpy's generator seeded with the curation seed.
"""

from __future__ import annotations

import math

import numpy as np


PLAIN_BELOW = 4096  # rows; above, k-center picks in rounds (the same picks, far less memory traffic)
CANDIDATES = 1024  # rows a round picks among: at 95k rows and 10,000 picks, 512: 10.1, 1,024: 9.1, 4,096: 59.5 CPU s
BLOCK = 16_777_216  # floats per matrix product when a round's picks are applied to every row


def kcenter(vectors: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """Greedy farthest-point selection of n rows (a 2-approximation of k-center).

    Starts from row 0 (the caller orders rows best first) and then repeatedly takes the row whose cosine distance to
    its nearest chosen row is largest (ties: the lower index, the better-ranked row). Returns the picked indices and,
    for each, its distance to the nearest earlier pick (0 for the first).
    """
    if len(vectors) > PLAIN_BELOW and n > 1:
        return kcenter_rounds(vectors, n)
    return kcenter_plain(vectors, n)


def kcenter_plain(vectors: np.ndarray, n: int) -> tuple[list[int], list[float]]:
    """One pass over all vectors per pick: O(rows * picks * dim) time, O(rows) memory."""
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


def kcenter_rounds(vectors: np.ndarray, n: int, candidates: int = CANDIDATES) -> tuple[list[int], list[float]]:
    """kcenter_plain's picks, made in rounds so that most of the work is one matrix product per round.

    kcenter_plain reads every vector once per pick: at a million rows and 10,000 picks that is 15 TB of memory
    traffic. Here a round takes the rows with the largest distances (every row at or above the `candidates`-th
    largest, `tau`) and picks among them alone, updating only their distances. That is exact while the best
    candidate is at or above tau: a distance only shrinks as picks are added, so every other row is still below
    tau. When the best candidate falls below tau, the round's picks are applied to all rows at once (a blocked
    matrix product, which runs at compute speed) and the next round starts. Each pick costs one product with the
    candidates, each round one pass over all rows.
    """
    total = len(vectors)
    if total == 0 or n <= 0:
        return [], []
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    picks, gaps = [0], [0.0]
    nearest = 1.0 - vectors @ vectors[0]
    nearest[0] = -np.inf
    while len(picks) < min(n, total):
        tau = np.partition(nearest, total - min(candidates, total))[total - min(candidates, total)]
        cand = np.flatnonzero(nearest >= tau)  # ascending, so argmax's first maximum is the lowest index
        values, x = nearest[cand], vectors[cand]
        new = []
        while len(picks) < min(n, total):
            j = int(np.argmax(values))
            if not values[j] >= tau or values[j] == -np.inf:
                break
            new.append(int(cand[j]))
            picks.append(new[-1])
            gaps.append(float(values[j]))
            np.minimum(values, 1.0 - x @ x[j], out=values)
            values[j] = -np.inf
        _apply(vectors, nearest, new)
    return picks, gaps


def _apply(vectors: np.ndarray, nearest: np.ndarray, new: list[int]) -> None:
    """nearest = min(nearest, distance to each new pick), blocked so the product stays small; picks get -inf."""
    if not new:
        return
    chosen = vectors[new].T
    rows = max(256, BLOCK // len(new))  # the product holds rows x picks floats: at most BLOCK (64 MB)
    for start in range(0, len(vectors), rows):
        block = 1.0 - vectors[start: start + rows] @ chosen
        np.minimum(nearest[start: start + rows], block.min(axis=1), out=nearest[start: start + rows])
    nearest[new] = -np.inf


def kmeans_labels(vectors: np.ndarray, k: int, seed: int, niter: int = 20, sample: int = 256) -> np.ndarray:
    """faiss k-means cluster of each row (k is capped at the number of rows), trained on at most `sample` rows per
    cluster (faiss draws them with the seed): at a million rows, training on all would cost minutes."""
    import faiss

    k = max(1, min(k, len(vectors)))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=sample)
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
