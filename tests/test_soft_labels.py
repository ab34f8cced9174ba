"""Soft labels in the store's compact form (datagen/store/soft_labels.py): one row per sample, codes within their
written error bounds, the per-token SQL view, the migration of an older store's per-token rows, and KD's loss on the
codes against the loss on the floats."""

from __future__ import annotations

import math
import random

import duckdb
import pytest

from datagen.store import migrations, soft_labels
from datagen.store.connection import open_store
from datagen.teachers.base import TokenLogprobs


def _positions(n: int, k: int, seed: int = 0, ids: bool = True) -> list[TokenLogprobs]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        logits = [rng.gauss(0, 3) for _ in range(k + 5)]
        z = math.log(sum(math.exp(x) for x in logits))
        lps = sorted((x - z for x in logits), reverse=True)[:k]
        top = rng.sample(range(49152), k)
        chosen = rng.randrange(k)
        out.append(TokenLogprobs(f"t{top[chosen]}", top[chosen] if ids else None, lps[chosen],
                                 [f"t{i}" for i in top], top if ids else [None] * k, lps))
    return out


def bound(gap: float) -> float:
    """The written error bound of an entry `gap` nats below its position's best (plus the best's own 1/2048)."""
    return (1 / 64 if gap < 2 else 1 / 16 if gap < 8 else 1 / 4) + 1 / 2048 + 1e-6


def test_codes_round_trip_within_the_written_bounds():
    positions = _positions(50, 20)
    labels = soft_labels.decode(soft_labels.encode("r", positions))
    assert len(labels) == 50 and labels.top_ids.shape == (50, 20)
    for p, got_lps, got_ids, lp, tid in zip(positions, labels.top_logprobs, labels.top_ids, labels.logprobs,
                                            labels.token_ids):
        assert sorted(got_ids.tolist()) == sorted(p.top_ids) and tid == p.token_id
        assert list(got_lps) == sorted(got_lps, reverse=True)  # rank order
        assert abs(lp - p.logprob) <= 1 / 2048 + 1e-6
        got = dict(zip(got_ids.tolist(), got_lps.tolist()))
        best = p.top_logprobs[0]
        assert abs(max(got.values()) - best) <= 1 / 2048 + 1e-6
        for want_id, want in zip(p.top_ids, p.top_logprobs):
            if best - want < 15:
                assert abs(got[want_id] - want) <= bound(best - want), (best - want, got[want_id], want)
            else:  # clamped: stored as 15 nats below the best
                assert got[want_id] == pytest.approx(max(got.values()) - 15, abs=1e-5)


def test_entries_without_mass_are_left_out_and_strings_kept_only_without_ids():
    pos = TokenLogprobs("a", 7, -0.5, ["a", "b", "c"], [8, 7, 9], [-1.0, -0.5, float("-inf")])
    row = soft_labels.encode("r", [pos, TokenLogprobs("b", 8, -0.1, ["b"], [8], [-0.1])])
    assert (row["k"], row["width"], row["top_tokens"]) == (2, 2, None)
    labels = soft_labels.decode(row)
    assert labels.top_ids.tolist() == [[7, 8], [8, -1]]  # rank order back; the cut entry and the padding absent
    assert labels.top_logprobs[1, 1] == float("-inf") and labels.top_logprobs[0, 0] > labels.top_logprobs[0, 1]
    no_ids = soft_labels.decode(soft_labels.encode("r", _positions(3, 4, ids=False)))
    assert no_ids.top_tokens is not None and set(no_ids.top_ids.ravel().tolist()) == {-1}
    assert all(t is not None for t in no_ids.top_tokens) and no_ids.top_logprobs.max() > -10
    big = soft_labels.encode("r", [TokenLogprobs("z", 151_000, -0.2, ["z"], [151_000], [-0.2])])
    assert big["width"] == 4 and soft_labels.decode(big).top_ids.tolist() == [[151_000]]


def test_the_view_reads_back_per_token_and_training_reads_arrays(tmp_path):
    con = open_store(tmp_path / "s.duckdb")
    try:
        rows = {f"r{i}": _positions(30 + i, 20, seed=i) for i in range(3)}
        from datagen.store.writes import insert_rows
        import pyarrow as pa

        insert_rows(con, "soft_labels", pa.Table.from_pylist([soft_labels.encode(rid, ps) for rid, ps in rows.items()],
                                                             schema=soft_labels.arrow_schema()))
        got = con.execute("SELECT row_id, position, token, token_id, logprob, top_ids, top_logprobs FROM logprobs "
                          "ORDER BY row_id, position").fetchall()
        assert len(got) == sum(len(ps) for ps in rows.values())
        for rid, position, token, token_id, logprob, top_ids, top_lps in got:
            want = rows[rid][position]
            assert (token, token_id, sorted(top_ids)) == (want.token, want.token_id, sorted(want.top_ids))
            assert logprob == pytest.approx(want.logprob, abs=1 / 2048 + 1e-6)
            assert top_lps == sorted(top_lps, reverse=True)
            by_id = dict(zip(top_ids, top_lps))
            assert all(abs(by_id[i] - lp) <= bound(want.top_logprobs[0] - lp) or want.top_logprobs[0] - lp > 15
                       for i, lp in zip(want.top_ids, want.top_logprobs))
        arrays = soft_labels.read(con, ["r1", "r2", "missing"])
        assert set(arrays) == {"r1", "r2"}
        view = [(ids, lps) for rid, _, _, _, _, ids, lps in got if rid == "r2"]
        for (ids, lps), a_ids, a_lps in zip(view, arrays["r2"].top_ids, arrays["r2"].top_logprobs):
            assert dict(zip(ids, lps)) == pytest.approx(dict(zip(a_ids.tolist(), a_lps.tolist())), abs=1e-5)
    finally:
        con.close()


def test_an_older_stores_per_token_rows_migrate_to_the_compact_form(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    done = [(n, fn) for n, fn in migrations.MIGRATIONS if n < "013"]
    for name, fn in done:
        fn(con)
        con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [name])
    positions = _positions(12, 5, seed=3)
    for i, p in enumerate(positions):
        con.execute("INSERT INTO token_logprobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    ["row", i, p.token, p.token_id, p.logprob, p.top_tokens, p.top_ids, p.top_logprobs])
    con.close()
    con = open_store(path)
    try:
        assert "token_logprobs" not in {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        got = con.execute("SELECT position, token_id, top_ids, top_logprobs FROM logprobs ORDER BY position").fetchall()
        assert [r[0] for r in got] == list(range(12))
        assert [sorted(r[2]) for r in got] == [sorted(p.top_ids) for p in positions]
        for (_, _, ids, lps), p in zip(got, positions):
            by_id = dict(zip(ids, lps))
            assert all(abs(by_id[i] - lp) <= bound(p.top_logprobs[0] - lp) for i, lp in zip(p.top_ids,
                                                                                          p.top_logprobs))
    finally:
        con.close()


def test_kd_loss_on_the_codes_is_within_1e_3_of_the_loss_on_the_floats():
    """The KD term (every divergence and tail setting) from decoded codes against the same from the floats (with
    the exact mass outside the top k), for a student whose logits differ from the teacher's; the written bound is
    1e-3 (relative). Without the stored rest, reverse KL with `tail` misses it (1 - the decoded top k's sum is
    ill-conditioned when they hold most of the mass)."""
    import torch

    from sft.kd import kd_loss

    n, k, vocab = 400, 20, 300
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(n, vocab, generator=g) * 3
    student = teacher + torch.randn(n, vocab, generator=g) * 1.5
    t_lp = teacher.double().log_softmax(-1)
    top_lps, top_ids = t_lp.topk(k, -1)
    exact_rest = torch.log1p(-top_lps.exp().sum(-1))
    positions = [TokenLogprobs("x", int(top_ids[p, 0]), float(top_lps[p, 0]), ["x"] * k, top_ids[p].tolist(),
                               top_lps[p].tolist()) for p in range(n)]
    labels = soft_labels.decode(soft_labels.encode("r", positions))
    assert labels.rest.tolist() == pytest.approx(exact_rest.tolist(), abs=1 / 2048 + 1e-6)

    def pad(x, fill):  # kd_loss's layout: position t holds the teacher data for the token at t
        x = torch.as_tensor(x)
        return torch.cat([torch.full((1, *x.shape[1:]), fill, dtype=x.dtype), x])[None]

    logits = pad(student, 0.0)
    hard = pad(top_ids[:, 0], -100)
    for divergence in ("forward", "reverse"):
        for tail in (False, True):
            exact = kd_loss(logits, hard, pad(top_ids, -1), pad(top_lps.float(), 0.0), 0.0, 1.0, divergence, tail,
                            pad(exact_rest.float(), float("nan"))).kd
            coded = kd_loss(logits, hard, pad(labels.top_ids.astype("int64"), -1), pad(labels.top_logprobs, 0.0),
                            0.0, 1.0, divergence, tail, pad(labels.rest, float("nan"))).kd
            assert float(coded) == pytest.approx(float(exact), rel=1e-3), (divergence, tail)
