"""Semantic dedup: rows whose embeddings have cosine similarity at or above a threshold are duplicates.

Memory stays linear in rows: no n-by-n matrix is ever built. Neighbours above the threshold come from a faiss range
search, one block of queries at a time, keeping at most `max_neighbors` per row:
- up to `exact_below` rows, against a flat inner-product index (every pair compared, in BLAS tiles);
- above it, against an IVF index: k-means splits the rows into about 4*sqrt(n) clusters (at most n/39, so each
  cluster has enough points to train on) and each row is compared with the rows of its `nprobe` nearest clusters.
  That is SemDeDup's "cluster, then compare within clusters", except that a row near a cluster border is also
  compared across it.

faiss was chosen over usearch because it gives exact range search (the flat index), IVF and k-means (also used by
selection) in one well-kept package. Vectors must be L2-normalised (curation/embed.py does that), so inner product
is cosine similarity.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 4096


TRAIN_PER_LIST = 32  # IVF k-means trains on at most this many rows per list (faiss draws them with the seed)
_NONE = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def neighbours(vectors: np.ndarray, threshold: float, exact_below: int = 50_000, nprobe: int = 16,
               seed: int = 0, max_neighbors: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each row, (indices, similarities) of the other rows with cosine >= threshold, most similar first."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    index = _index(faiss, vectors, exact_below, nprobe, seed)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    # a hair below the threshold, so float rounding in faiss cannot lose a pair that sits exactly on it
    radius = threshold - 1e-6
    for start in range(0, n, BLOCK):
        lims, sims, ids = index.range_search(vectors[start: start + BLOCK], radius)
        out += _split(lims, sims, ids, start, radius, max_neighbors)
    return out


def _split(lims, sims, ids, start: int, radius: float, max_neighbors: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One block's range-search result as per-row (ids, sims), most similar first (ties: lower id), self left out.

    Done with whole-block numpy operations: at a million rows a Python step per row and neighbour costs minutes.
    """
    rows = len(lims) - 1
    query = np.repeat(np.arange(rows), np.diff(lims).astype(np.int64))
    keep = (ids != start + query) & (sims >= radius)
    query, ids, sims = query[keep], ids[keep].astype(np.int64), sims[keep]
    order = np.lexsort((ids, -sims, query))
    query, ids, sims = query[order], ids[order], sims[order]
    bounds = np.searchsorted(query, np.arange(rows + 1))
    out = []
    for q in range(rows):
        a, b = bounds[q], bounds[q + 1]
        out.append(_NONE if a == b else (ids[a: min(b, a + max_neighbors)], sims[a: min(b, a + max_neighbors)]))
    return out


def _index(faiss, vectors: np.ndarray, exact_below: int, nprobe: int, seed: int):
    n, dim = vectors.shape
    if n <= exact_below:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants 39 training points per cluster
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # k-means on every row would cost minutes at a million rows; lists only route the search (every row is
        # still compared within its nprobe nearest lists), so a sample places them well enough
        index.cp.max_points_per_centroid = TRAIN_PER_LIST
        index.cp.min_points_per_centroid = min(TRAIN_PER_LIST, index.cp.min_points_per_centroid)  # no warning
        index.train(vectors)
        index.nprobe = min(nprobe, nlist)
    index.add(vectors)
    return index


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
