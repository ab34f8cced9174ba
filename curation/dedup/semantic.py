"""Semantic dedup: rows whose embeddings have cosine similarity at or above a threshold are duplicates.

Memory stays linear in rows: no n-by-n matrix is ever built. Neighbours above the threshold come, keeping at most
`max_neighbors` per row:
- up to `exact_below` rows, from a faiss range search against a flat inner-product index (every pair compared, in
  BLAS tiles, one block of queries at a time);
- above it, from clusters: spherical k-means (faiss) splits the rows into about 4*sqrt(n) clusters, and each row is
  compared with the rows of its `nprobe` nearest clusters. That is SemDeDup's "cluster, then compare within
  clusters", except that a row near a cluster border is also compared across it: faiss's IVF search, done here one
  cluster at a time as a matrix product (the rows probing a cluster times that cluster's rows). faiss's own IVF
  range search scans lists one query at a time, measured at about a tenth of BLAS speed: 30 s at 100k rows here,
  so ten minutes at a million.

faiss was chosen over usearch because it gives exact range search (the flat index) and k-means (also used by
selection) in one well-kept package. Vectors must be L2-normalised (datagen/embed/encode.py does that), so inner product
is cosine similarity.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 4096
# Clusters only route the search (each row is still compared with every row of its nprobe nearest clusters), so a
# rough k-means does: a sample of 16 rows per cluster and 4 iterations. Full training (256 rows, 10 iterations)
# would cost about an hour of CPU at a million rows.
TRAIN_PER_LIST = 16
TRAIN_ITERATIONS = 4
_NONE = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def neighbours(vectors: np.ndarray, threshold: float, exact_below: int = 50_000, nprobe: int = 16,
               seed: int = 0, max_neighbors: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each row, (indices, similarities) of the other rows with cosine >= threshold, most similar first."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    # a hair below the threshold, so float rounding cannot lose a pair that sits exactly on it
    radius = threshold - 1e-6
    if len(vectors) <= exact_below:
        query, ids, sims = _flat_pairs(vectors, radius)
    else:
        query, ids, sims = _cluster_pairs(vectors, radius, nprobe, seed)
    return _per_row(len(vectors), query, ids, sims, max_neighbors)


def _flat_pairs(vectors: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    parts = []
    for start in range(0, len(vectors), BLOCK):
        lims, sims, ids = index.range_search(vectors[start: start + BLOCK], radius)
        parts.append((start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64)),
                      ids.astype(np.int64), sims))
    return _concat(parts)


def _cluster_pairs(vectors: np.ndarray, radius: float, nprobe: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (query, row, cosine) at or above radius among each row's `nprobe` nearest clusters."""
    n = len(vectors)
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # at least 39 rows per cluster to train on
    probes = _probe_lists(vectors, nlist, min(nprobe, nlist), seed)
    home = _grouped(probes[:, 0], nlist)  # each row lives in its nearest cluster
    asked = _grouped(probes.ravel(), nlist)  # ... and searches its nprobe nearest
    parts = []
    for c in range(nlist):
        members, queries = home[c], asked[c] // probes.shape[1]
        if len(members) == 0 or len(queries) == 0:
            continue
        sims = vectors[queries] @ vectors[members].T
        q, m = np.nonzero(sims >= radius)
        parts.append((queries[q], members[m], sims[q, m]))
    return _concat(parts)


def _probe_lists(vectors: np.ndarray, nlist: int, nprobe: int, seed: int) -> np.ndarray:
    """Each row's nprobe nearest k-means centroids, nearest first (n x nprobe)."""
    import faiss

    km = faiss.Kmeans(vectors.shape[1], nlist, niter=TRAIN_ITERATIONS, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=TRAIN_PER_LIST)
    km.train(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(km.centroids)
    out = np.empty((len(vectors), nprobe), dtype=np.int64)
    for start in range(0, len(vectors), 65_536):
        out[start: start + 65_536] = index.search(vectors[start: start + 65_536], nprobe)[1]
    return out


def _grouped(labels: np.ndarray, groups: int) -> list[np.ndarray]:
    """For each group, the positions in `labels` that carry it (ascending)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(groups + 1))
    return [order[bounds[g]: bounds[g + 1]] for g in range(groups)]


def _concat(parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def _per_row(n: int, query: np.ndarray, ids: np.ndarray, sims: np.ndarray, max_neighbors: int
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-row (ids, sims), most similar first (ties: lower id), self left out, at most max_neighbors each.

    Whole-array numpy operations: at a million rows a Python step per pair costs minutes.
    """
    keep = ids != query
    query, ids, sims = query[keep], ids[keep], sims[keep].astype(np.float32)
    order = np.lexsort((ids, -sims, query))
    query, ids, sims = query[order], ids[order], sims[order]
    bounds = np.searchsorted(query, np.arange(n + 1))
    out = []
    for q in range(n):
        a, b = bounds[q], bounds[q + 1]
        out.append(_NONE if a == b else (ids[a: min(b, a + max_neighbors)], sims[a: min(b, a + max_neighbors)]))
    return out


def semantic_dedup(vectors: np.ndarray, order: list[int], threshold: float, exact_below: int = 50_000,
                   nprobe: int = 16, seed: int = 0) -> list[tuple]:
    """Visit rows best first; drop a row whose neighbour above the threshold was already kept."""
    near = neighbours(vectors, threshold, exact_below, nprobe, seed)
    kept = np.zeros(len(near), dtype=bool)
    out: list[tuple] = [None] * len(near)  # type: ignore[list-item]
    for i in order:
        ids, sims = near[i]
        hit = kept[ids] if len(ids) else ids.astype(bool)
        if hit.any():
            j = int(np.argmax(hit))  # neighbours are sorted most similar first
            out[i] = (False, int(ids[j]), float(sims[j]))
        else:
            kept[i] = True
            out[i] = (True, None, None)
    return out
