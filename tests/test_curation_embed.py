"""Embeddings: the store functions, one vector per distinct normalised text, progress, the device rule, the static
model and the cascade; k-center in rounds and the vectorised neighbour lists against their plain versions."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from curation.dedup.cascade import cascade_dedup
from curation.dedup.semantic import neighbours, semantic_dedup
from curation.select.diversity import kcenter_plain, kcenter_rounds
from datagen.embed import encode as embed_mod
from datagen.store import embeddings as store
from datagen.store.migrations import migrate

MINILM = "bundled:all-minilm-l6-v2"


@pytest.fixture()
def con():
    c = duckdb.connect(":memory:")
    migrate(c)
    yield c
    c.close()


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_store_and_lookup_round_trip(con):
    vectors = unit_rows(5, 8)
    store.store(con, "m", [f"r{i}" for i in range(5)], [f"h{i}" for i in range(5)], vectors)
    store.store(con, "other", ["x"], ["h9"], unit_rows(1, 8, seed=1))
    found, got = store.lookup(con, "m", ["h3", "nope", "h0", "h9"])
    assert found.tolist() == [True, False, True, False]  # h9 is stored under another model
    assert np.array_equal(got[0], vectors[3]) and np.array_equal(got[2], vectors[0]) and not got[1].any()
    assert store.count(con, "m") == 5 and store.count(con) == 6
    nothing, empty = store.lookup(con, "m", ["zz"])
    assert not nothing.any() and empty.shape == (1, 0)


def test_lookup_refuses_vectors_of_another_width(con):
    store.store(con, "m", ["a"], ["h"], unit_rows(1, 8))
    with pytest.raises(ValueError, match="8 dimensions, expected 4"):
        store.lookup(con, "m", ["h"], dim=4)


def fake_encoder(calls: list):
    def encode(texts, ref, spec_dir=None, batch_size=None, backend="torch"):
        calls.append(list(texts))
        return np.stack([unit_rows(1, 6, seed=sum(map(ord, t)))[0] for t in texts])
    return encode


def test_one_vector_per_distinct_normalised_text_and_reuse(con, monkeypatch):
    calls: list = []
    monkeypatch.setattr(embed_mod, "encode", fake_encoder(calls))
    texts = ["Hello  World", "hello world", "Other text", "HELLO WORLD\n"]
    lines: list[str] = []
    first = embed_mod.embed(con, texts, ["a", "b", "c", "d"], MINILM, log=lines.append)
    assert calls == [["hello world", "other text"]]  # two distinct normalised texts, each encoded once
    assert np.array_equal(first[0], first[1]) and np.array_equal(first[0], first[3])
    assert not np.array_equal(first[0], first[2])
    assert store.count(con) == 2
    assert lines[0].startswith("embedding 2 texts") and "texts/s" in lines[-1] and lines[-1].endswith("done")
    again = embed_mod.embed(con, texts[::-1], ["d", "c", "b", "a"], MINILM)
    assert len(calls) == 1 and np.array_equal(again, first[::-1])  # all from the store


def test_progress_reports_rate_and_eta():
    lines: list[str] = []
    progress = embed_mod.Progress(100, 20, "m (torch)", lines.append, every=0.0)
    progress.advance(40)
    assert lines[0] == "embedding 100 texts with m (torch) (20 cached)"
    assert "40 of 100 texts" in lines[1] and "texts/s" in lines[1] and "ETA" in lines[1]
    assert embed_mod._duration(3725) == "1 h 02 min" and embed_mod._duration(75) == "1 min 15 s"


def test_embeddings_go_to_cuda_when_torch_sees_one(monkeypatch):
    import sentence_transformers
    import torch

    seen = {}

    class Recorder:
        def __init__(self, path, device):
            seen["device"] = device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Recorder)
    monkeypatch.setattr(embed_mod, "_MODELS", {})
    embed_mod.load_model(MINILM)
    assert seen["device"] == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert embed_mod.device() == "cpu"


def test_static_model_distils_and_keeps_near_duplicates_close(tmp_path):
    from datagen.embed.static import StaticModel, distill
    from datagen.bundled import resolve_model
    from pathlib import Path

    distill(Path(resolve_model(MINILM)), tmp_path, dims=64, vocab=6000)  # the 6,000 most common ids: quick
    model = StaticModel(tmp_path)
    a, b, c, empty = model.encode(["How many apples did the farmer sell in May?",
                                   "how many apples did the farmer sell in may", "Write a poem about the sea.", ""])
    assert model.vectors.shape == (30522, 64)
    assert abs(np.linalg.norm(a) - 1) < 1e-5 and not empty.any()
    assert a @ b > 0.99 and a @ c < a @ b - 0.1


def test_cascade_sends_only_candidate_rows_to_torch_and_keeps_its_verdicts():
    torch_vecs = unit_rows(40, 16)
    torch_vecs[7] = torch_vecs[3] + 0.01  # a near-duplicate pair both models see
    torch_vecs[7] /= np.linalg.norm(torch_vecs[7])
    static = torch_vecs.copy()
    torch_vecs[30] = torch_vecs[20]  # a pair the static model does not see: the cascade misses it by design
    static[30] = unit_rows(1, 16, seed=5)[0]
    asked = []

    def embed(idx, backend):
        if backend == "torch":
            asked.append(list(idx))
        return (torch_vecs if backend == "torch" else static)[idx]

    out = cascade_dedup(40, list(range(40)), 0.95, embed)
    assert asked == [[3, 7]]
    assert out[7][0] is False and out[7][1] == 3 and out[7][2] > 0.95
    assert out[30][0] is True  # missed: the static model gave it no candidate
    full = semantic_dedup(torch_vecs, list(range(40)), 0.95)
    assert sum(a[0] == b[0] for a, b in zip(out, full)) == 39


@pytest.mark.parametrize("candidates", [8, 64])
def test_kcenter_in_rounds_picks_what_the_plain_version_picks(candidates):
    x = unit_rows(3000, 12, seed=2)
    x[100] = x[5]  # exact duplicates make ties: the lower index must win in both
    plain, gaps = kcenter_plain(x, 200)
    rounds, round_gaps = kcenter_rounds(x, 200, candidates=candidates)
    assert rounds == plain and np.allclose(round_gaps, gaps, atol=1e-6)
    assert kcenter_rounds(x[:5], 9)[0] == kcenter_plain(x[:5], 9)[0]  # more picks than rows: all of them


def test_neighbour_lists_match_brute_force():
    x = unit_rows(500, 8, seed=3)
    x[10] = x[20] = x[30]  # a group of three identical rows: each has the other two, lower id first
    got = neighbours(x, 0.9)
    sims = x @ x.T
    for i in range(500):
        want = [j for j in np.argsort(-sims[i], kind="stable") if j != i and sims[i, j] >= 0.9 - 1e-6]
        assert sorted(got[i][0].tolist()) == sorted(want), i
    assert got[10][0].tolist()[:2] == [20, 30]
    assert len(neighbours(x, 0.9, max_neighbors=1)[10][0]) == 1


def test_backend_keys_in_the_curation_spec():
    from pydantic import TypeAdapter, ValidationError

    from datagen.spec.curation_models import DedupSpec, DiversitySpec

    dedup = TypeAdapter(DedupSpec).validate_python
    assert dedup({"type": "semantic", "column": "q"}).backend == "torch"
    assert dedup({"type": "semantic", "column": "q", "threshold": 0.92, "backend": "cascade"}).backend == "cascade"
    with pytest.raises(ValidationError, match="backend"):
        dedup({"type": "semantic", "column": "q", "backend": "static"})  # its own scale: not a dedup backend
    assert DiversitySpec(column="q", backend="static").backend == "static"
    with pytest.raises(ValidationError, match="backend"):
        DiversitySpec(column="q", backend="onnx")
