"""Selection: k-center picks the known farthest points, stratified sampling follows s1, ranks combine criteria."""

from __future__ import annotations

from collections import Counter

import numpy as np
from pydantic import TypeAdapter

from curation.select import priorities, select
from curation.select.diversity import kcenter, kmeans_labels, stratified
from curation.select.quality import percentile_ranks
from datagen.spec.curation_models import SelectSpec

spec_of = TypeAdapter(SelectSpec).validate_python


def unit(*xs) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


# a tight bunch around +x, one point at +y, one at -x, one at +z: k-center must take the far ones before the bunch
TOY = np.stack([unit(1, 0, 0), unit(1, 0.05, 0), unit(1, 0, 0.05), unit(1, 0.05, 0.05),
                unit(0, 1, 0), unit(-1, 0, 0), unit(0, 0, 1)])


def test_kcenter_picks_the_known_farthest_points():
    picks, gaps = kcenter(TOY, 4)
    assert picks[:2] == [0, 5]  # start at the best-ranked row; -x is the farthest from +x (cosine distance 2)
    assert set(picks[2:]) == {4, 6}  # then +y and +z, each at distance 1 from both
    assert gaps[1] > 1.99 and all(abs(g - 1.0) < 1e-5 for g in gaps[2:])
    assert kcenter(TOY, 10)[0][:4] == picks and len(kcenter(TOY, 10)[0]) == 7  # n above the rows: all of them


def test_percentile_ranks_share_ties_and_put_missing_last():
    assert percentile_ranks([1.0, 3.0, 2.0]).tolist() == [0.0, 1.0, 0.5]
    assert percentile_ranks([5.0, 5.0, None]).tolist() == [0.5, 0.5, 0.0]
    assert percentile_ranks([1.0, 2.0], higher_is_better=False).tolist() == [1.0, 0.0]


ROWS = [{"score": 5, "sol": "x" * 10, "topic": "a"}, {"score": 9, "sol": "x" * 5, "topic": "a"},
        {"score": 1, "sol": "x" * 90, "topic": "b"}, {"score": 7, "sol": "x" * 60, "topic": "c"}]


def no_embed(*args):
    raise AssertionError("no embeddings needed")


def test_top_n_by_quality_then_by_quality_and_difficulty():
    sel = select(spec_of({"n": 2, "quality": {"column": "score"}}), ROWS, 0, no_embed)
    assert sel.chosen == [1, 3]
    both = spec_of({"n": 2, "quality": {"column": "score"}, "difficulty": {"column": "sol"}})
    pr = priorities(both, ROWS)
    assert np.allclose(pr, [(1 / 3 + 1 / 3) / 2, (1 + 0) / 2, (0 + 1) / 2, (2 / 3 + 2 / 3) / 2])
    assert select(both, ROWS, 0, no_embed).chosen[0] == 3


def test_kcenter_selection_uses_the_quality_pool():
    vectors = TOY[:4]  # embed() is called with indices into the rows

    def embed(column, model, idx):
        return vectors[idx]

    spec = spec_of({"n": 2, "quality": {"column": "score"}, "diversity": {"column": "sol", "pool": 1.0}})
    sel = select(spec, ROWS, 0, embed)
    assert sel.chosen == [1, 3]  # the pool is the best 2 rows, so kcenter can only take those
    assert "kcenter pick 1" in sel.notes[1]


def test_stratified_by_column_covers_every_group_and_is_deterministic():
    groups = ["a"] * 10 + ["b"] * 2 + ["c"] * 1
    picks = stratified(groups, 13, seed=7)
    assert sorted(picks) == list(range(13))
    first = stratified(groups, 3, seed=7)
    assert first == stratified(groups, 3, seed=7)
    assert any(stratified(groups, 3, seed=s) != first for s in range(1, 6))
    # groups are drawn uniformly, not by size: over many seeds the single "c" row shows up in a third of first picks
    hits = Counter(groups[stratified(groups, 1, seed=s)[0]] for s in range(600))
    assert 150 <= hits["c"] <= 250


def test_weight_by_length_prefers_longer_rows_by_two_to_the_minus_rank():
    lengths = [10.0, 40.0, 20.0, 30.0]
    firsts = Counter(stratified(["g"] * 4, 1, seed=s, lengths=lengths)[0] for s in range(800))
    # weights 1/2, 1/4, 1/8, 1/16 (normalised) for the rows of length 40, 30, 20, 10
    assert 0.45 < firsts[1] / 800 < 0.62 and 0.18 < firsts[3] / 800 < 0.36 and firsts[0] < firsts[2] + 40


def test_kmeans_separates_obvious_clusters():
    rng = np.random.default_rng(1)
    a = unit(1, 0, 0) + 0.01 * rng.normal(size=(20, 3))
    b = unit(0, 1, 0) + 0.01 * rng.normal(size=(20, 3))
    x = np.concatenate([a, b]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = kmeans_labels(x, 2, seed=3)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20]
    assert (kmeans_labels(x, 2, seed=3) == labels).all()


def test_cluster_selection_by_topic_with_length_weighting():
    spec = spec_of({"n": 3, "difficulty": {"column": "sol"},
                    "diversity": {"method": "cluster", "by_column": "topic", "weight_by_length": True}})
    sel = select(spec, ROWS, 5, no_embed)
    assert len(sel.chosen) == 3 and {ROWS[i]["topic"] for i in sel.chosen} >= {"b", "c"}
    assert select(spec, ROWS, 5, no_embed).chosen == sel.chosen
