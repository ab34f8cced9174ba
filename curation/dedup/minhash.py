"""Near-duplicate dedup by estimated Jaccard similarity of word n-gram sets: datasketch MinHash + LSH.

LSH proposes candidates among the rows kept so far; a candidate counts only when its estimated Jaccard similarity
reaches the threshold (LSH alone admits false positives).

At a million rows datasketch's index is what costs: a set per band value per row (about 3 KB a row, 3 GB at a
million). But LSH only ever proposes a row that shares a whole band with another, so the signatures are kept in one
matrix, a vectorised pass finds the rows that share no band value with any other row (most of them: they are kept
and never reach the index), and only the rest go through `MinHashLSH`, in priority order as before. The verdicts are
the ones datasketch gives on all rows (tests/test_curation_dedup.py compares).
"""

from __future__ import annotations

from datagen.text import ngrams, words

CHUNK = 20_000  # texts whose shingles are held at once


def shingles(text: str, n: int) -> set[bytes]:
    tokens = words(text)
    grams = ngrams(tokens, n) if len(tokens) >= n else [" ".join(tokens)]
    return {g.encode("utf-8") for g in grams}


def signatures(texts: list[str], ngram: int, num_perm: int, seed: int):
    """datasketch MinHash hash values, one row per text (uint64, as datasketch keeps them), and their scheme."""
    import numpy as np
    from datasketch import MinHash

    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    scheme = MinHash(num_perm=num_perm, seed=seed).scheme
    for start in range(0, len(texts), CHUNK):
        chunk = (list(shingles(t, ngram)) for t in texts[start: start + CHUNK])
        for k, m in enumerate(MinHash.generator(chunk, num_perm=num_perm, seed=seed)):
            out[start + k] = m.hashvalues
    return out, scheme


def shares_a_band(sigs, bands: list[tuple[int, int]]):
    """True for each row whose values in some band equal another row's (the only rows LSH can pair)."""
    import numpy as np

    shared = np.zeros(len(sigs), dtype=bool)
    for start, end in bands:
        # one 64-bit fingerprint per band value; a fingerprint collision only sends a row to the exact index
        key = np.zeros(len(sigs), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for col in range(start, end):
                key = (key ^ sigs[:, col]) * np.uint64(0x100000001B3)
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        shared |= counts[inverse] > 1
    return shared


def minhash_dedup(texts: list[str], order: list[int], threshold: float, ngram: int = 3,
                  num_perm: int = 128, seed: int = 1) -> list[tuple]:
    from datasketch import LeanMinHash, MinHashLSH

    sigs, scheme = signatures(texts, ngram, num_perm, seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    shared = shares_a_band(sigs, lsh.hashranges)
    hashes = {i: LeanMinHash(seed=seed, hashvalues=sigs[i], scheme=scheme) for i in map(int, shared.nonzero()[0])}
    out: list[tuple] = [(True, None, None)] * len(texts)
    for i in order:
        if i not in hashes:
            continue  # shares no band with any row: nothing can be its duplicate, and it is no row's
        best, best_sim = None, -1.0
        for j in lsh.query(hashes[i]):
            sim = hashes[i].jaccard(hashes[j])
            if sim >= threshold and (sim > best_sim or (sim == best_sim and j < best)):
                best, best_sim = j, sim
        if best is None:
            lsh.insert(i, hashes[i])
        else:
            out[i] = (False, best, float(best_sim))
    return out
