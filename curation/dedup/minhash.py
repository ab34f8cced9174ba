"""Near-duplicate dedup by estimated Jaccard similarity of word n-gram sets: MinHash + LSH banding, in numpy.

Each text's word n-grams are hashed (a word's hash is computed once per distinct word, an n-gram's combines its
words' hashes and is mixed by MurmurHash3's finaliser, then cut to 32 bits), and `num_perm` seeded affine
permutations of those hashes (a*h+b mod 2^32, a odd, datasketch's default scheme) give the signature: per
permutation, the minimum over the text's n-grams. Two signatures agree in a position with
probability equal to the sets' Jaccard similarity. Rows are banded as datasketch's MinHashLSH bands them (its
optimal (bands, rows) for the threshold); rows sharing a band are candidates, and a candidate counts only when the
estimated Jaccard similarity reaches the threshold.

datasketch did the same one row at a time in Python (about 0.3 ms per row, five minutes at a million rows); here
hashing and permuting are whole-chunk numpy operations and only rows that share a band with another row reach the
Python loop.
"""

from __future__ import annotations

import hashlib

import numpy as np

from datagen.text import ngrams, words

CHUNK = 2048  # texts per permutation step: bounds the (n-grams x num_perm) matrix
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def shingles(text: str, n: int) -> set[bytes]:
    tokens = words(text)
    grams = ngrams(tokens, n) if len(tokens) >= n else [" ".join(tokens)]
    return {g.encode("utf-8") for g in grams}


def minhash_dedup(texts: list[str], order: list[int], threshold: float, ngram: int = 3,
                  num_perm: int = 128, seed: int = 1) -> list[tuple]:
    """Visit rows in `order`; drop a row whose estimated Jaccard similarity to a kept row reaches the threshold."""
    sig = signatures(texts, ngram, num_perm, seed)
    bands, rows = band_shape(threshold, num_perm)
    members, starts, group = buckets(sig, bands, rows)
    shared = np.zeros(len(texts), dtype=bool)
    for band in range(bands):
        sizes = np.diff(starts[band])
        shared |= sizes[group[band]] > 1
    kept = np.zeros(len(texts), dtype=bool)
    out: list[tuple] = [(True, None, None)] * len(texts)
    for i in order:
        if shared[i]:
            cands = np.unique(np.concatenate([members[b][starts[b][group[b][i]]: starts[b][group[b][i] + 1]]
                                              for b in range(bands)]))
            cands = cands[kept[cands]]
            if len(cands):
                sims = (sig[cands] == sig[i]).mean(axis=1)
                hit = np.flatnonzero(sims >= threshold)
                if len(hit):
                    j = hit[np.argmax(sims[hit])]  # the first maximum: ties go to the lower row index
                    out[i] = (False, int(cands[j]), float(sims[j]))
                    continue
        kept[i] = True
    return out


def band_shape(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's (bands, rows per band) for this threshold: equal weight on false positives and negatives."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def signatures(texts: list[str], n: int, num_perm: int, seed: int) -> np.ndarray:
    """One num_perm-long uint32 MinHash signature per text (n-gram hashes permuted by a*h+b mod 2^32, a odd)."""
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, 2**31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]
    b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)[:, None]
    cache: dict[str, int] = {}
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    for start in range(0, len(texts), CHUNK):
        grams, lengths = _gram_hashes(texts[start: start + CHUNK], n, cache)
        # permutations x n-grams, so each permutation's minimum per text runs along contiguous memory
        permuted = a * grams.astype(np.uint32)[None, :]
        permuted += b
        bounds = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out[start: start + len(lengths)] = np.minimum.reduceat(permuted, bounds, axis=1).T
    return out


def _gram_hashes(texts: list[str], n: int, cache: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit hashes of every text's word n-grams (a text with fewer words: one gram of them all), and counts."""
    ids: list[int] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for k, text in enumerate(texts):
        tokens = words(text)
        ids += [cache[t] if t in cache else cache.setdefault(t, _word_hash(t)) for t in tokens] or [0]
        lengths[k] = max(len(tokens), 1)
    word = np.array(ids, dtype=np.uint64)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    counts = np.maximum(lengths - n + 1, 1)
    # the n-gram starting at each position of the chunk's words (running into the next text near an end)
    padded = np.concatenate([word, np.zeros(n, dtype=np.uint64)])
    with np.errstate(over="ignore"):
        h = np.zeros(len(word), dtype=np.uint64)
        for j in range(n):  # order matters: "a b c" and "c b a" are different n-grams
            h = h * np.uint64(0x100000001B3) + padded[j: j + len(word)]
    # keep the starts whose n-gram lies inside its text; a text shorter than n keeps its first position, whose
    # n-gram is its words followed by the next text's, so it is recomputed on its own words below
    inside = np.arange(len(word)) - np.repeat(bounds[:-1], lengths) <= np.repeat(lengths - n, lengths)
    first = bounds[:-1]
    inside[first] = True
    for k in np.flatnonzero(lengths < n):
        with np.errstate(over="ignore"):
            value = np.uint64(0)
            for w in word[first[k]: first[k] + lengths[k]]:
                value = value * np.uint64(0x100000001B3) + w
        h[first[k]] = value
    return _fmix(h[inside]), counts


def _word_hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def _fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the whole hash, so affine maps permute well."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(33))
        h = h * _MIX[0]
        h = h ^ (h >> np.uint64(33))
        h = h * _MIX[1]
        return h ^ (h >> np.uint64(33))


def buckets(sig: np.ndarray, bands: int, rows: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per band: row indices sorted by band value, each bucket's start in that order, and each row's bucket."""
    members, starts, group = [], [], []
    for band in range(bands):
        key = np.zeros(len(sig), dtype=np.uint64)
        with np.errstate(over="ignore"):  # a polynomial hash of the band; a collision only adds a candidate
            for j in range(band * rows, (band + 1) * rows):
                key = key * np.uint64(0x9E3779B97F4A7C15) + sig[:, j].astype(np.uint64)
        sort = np.argsort(key, kind="stable")
        new = np.concatenate([[True], key[sort][1:] != key[sort][:-1]]) if len(key) else np.zeros(0, bool)
        ids = np.cumsum(new) - 1
        g = np.empty(len(key), dtype=np.int64)
        g[sort] = ids
        members.append(sort)
        starts.append(np.append(np.flatnonzero(new), len(key)))
        group.append(g)
    return members, starts, group
