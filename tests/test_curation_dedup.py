"""Every dedup kind on hand-made rows: near-duplicates that differ in whitespace, case and one word."""

from __future__ import annotations

import numpy as np
import pytest

from curation.dedup import priority_order
from curation.dedup.exact import exact_dedup
from curation.dedup.minhash import minhash_dedup
from curation.dedup.semantic import neighbours, semantic_dedup
from datagen.embed.encode import encode

BASE = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?")
SPACED = BASE.replace(" ", "   ", 5).replace("April,", "April,\n")  # whitespace only
UPPER = BASE.upper()  # case only
WORD = BASE.replace("friends", "classmates")  # one word
OTHER = ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
         "How much did she earn?")
OTHER2 = "Write a haiku about the sea at night, with the moon reflected in the waves."
TEXTS = [BASE, SPACED, UPPER, WORD, OTHER, OTHER2]


def verdicts_kept(result) -> list[bool]:
    return [r[0] for r in result]


def test_exact_catches_whitespace_and_case_but_not_a_changed_word():
    result = exact_dedup(TEXTS, list(range(len(TEXTS))))
    assert verdicts_kept(result) == [True, False, False, True, True, True]
    assert result[1][1] == 0 and result[2][1] == 0


def test_minhash_catches_the_changed_word_too():
    result = minhash_dedup(TEXTS, list(range(len(TEXTS))), threshold=0.7)
    assert verdicts_kept(result) == [True, False, False, False, True, True]
    assert result[3][1] == 0 and 0.7 <= result[3][2] < 1.0
    assert result[1][2] == 1.0  # normalised words are identical


def test_minhash_keeps_the_best_row_of_a_group_by_keep_by():
    rows = [{"score": 3}, {"score": 9}, {"score": None}, {"score": 5}, {"score": 1}, {"score": 2}]
    order = priority_order(rows, "score", "highest")
    assert order[:2] == [1, 3] and order[-1] == 2  # missing scores last
    result = minhash_dedup(TEXTS, order, threshold=0.7)
    assert verdicts_kept(result) == [False, True, False, False, True, True]
    assert {r[1] for r in result if not r[0]} == {1}
    lowest = minhash_dedup(TEXTS, priority_order(rows, "score", "lowest"), threshold=0.7)
    assert verdicts_kept(lowest)[:4] == [True, False, False, False]  # score 3 is the lowest in the group


def test_minhash_gives_the_verdicts_of_datasketchs_index_over_every_row():
    """Only rows that share a band value reach the index; the verdicts must be those of every row inserted."""
    import random

    from datasketch import MinHash, MinHashLSH

    from curation.dedup.minhash import shingles

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choices(vocab, k=rng.randint(8, 30))) for _ in range(1500)]
    texts = base + [" ".join(t.split()[:-1] + ["changed"]) for t in rng.sample(base, 150)]  # Jaccard ~0.8-0.95
    texts += [" ".join(rng.sample(t.split(), len(t.split()))) for t in rng.sample(base, 50)]  # some low
    order = list(range(len(texts)))
    rng.shuffle(order)
    got = minhash_dedup(texts, order, threshold=0.7)

    hashes = MinHash.bulk([list(shingles(t, 3)) for t in texts], num_perm=128, seed=1)
    lsh, want = MinHashLSH(threshold=0.7, num_perm=128), [None] * len(texts)
    for i in order:
        sims = [(hashes[i].jaccard(hashes[j]), -j) for j in lsh.query(hashes[i])]
        best = max((s for s in sims if s[0] >= 0.7), default=None)
        if best is None:
            lsh.insert(i, hashes[i])
            want[i] = (True, None, None)
        else:
            want[i] = (False, -best[1], best[0])
    assert got == want
    assert 100 <= sum(not k for k, _, _ in got) < 200  # the changed-word copies, not the other rows


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return encode(TEXTS, "bundled:all-minilm-l6-v2")


def test_embeddings_are_normalised(vectors):
    assert vectors.shape == (6, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_semantic_catches_all_three_near_duplicates(vectors):
    result = semantic_dedup(vectors, list(range(6)), threshold=0.9)
    assert verdicts_kept(result) == [True, False, False, False, True, True]
    assert [r[1] for r in result[1:4]] == [0, 0, 0]
    assert all(0.9 <= r[2] <= 1.0 + 1e-6 for r in result[1:4])


def test_semantic_keep_by_and_a_threshold_above_the_pairs(vectors):
    result = semantic_dedup(vectors, [3, 0, 1, 2, 4, 5], threshold=0.9)  # row 3 is the best of its group
    assert verdicts_kept(result) == [False, False, False, True, True, True]
    strict = semantic_dedup(vectors, list(range(6)), threshold=0.9999)
    assert verdicts_kept(strict)[3:] == [True, True, True]  # a changed word is not identical


def test_a_chain_keeps_both_ends():
    # a ~ b and b ~ c, but a and c are far apart: b goes, a and c stay
    a, c = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    b = (a + c) / np.linalg.norm(a + c)
    result = semantic_dedup(np.stack([a, b, c]).astype(np.float32), [0, 1, 2], threshold=0.7)
    assert verdicts_kept(result) == [True, False, True]


def test_ivf_search_finds_the_same_pairs_as_the_exact_one():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 32)).astype(np.float32)
    noisy = base[:100] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)  # 100 planted near-duplicates
    x = np.concatenate([base, noisy])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = neighbours(x, 0.95, exact_below=10_000)
    ivf = neighbours(x, 0.95, exact_below=0, nprobe=8)  # forces the clustered (IVF) index
    pairs = lambda near: {(i, int(j)) for i, (ids, _) in enumerate(near) for j in ids}
    assert {(i, 300 + i) for i in range(100)} <= pairs(exact)
    assert len(pairs(ivf) & pairs(exact)) >= 0.95 * len(pairs(exact))
    kept = semantic_dedup(x, list(range(len(x))), 0.95, exact_below=0, nprobe=8)
    assert sum(not k for k, _, _ in kept) >= 95
