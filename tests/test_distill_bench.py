"""What is deterministic in the distillation benchmark (tests/bench/distill_arith.py, issue 30): the arithmetic
generator (seeded, answers right, exact dedup across splits, difficulty) and the statistics (McNemar exact, Holm,
paired intervals, minimum detectable effects), against scipy's tests or values worked by hand."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tests.bench import arithmetic as ar

stats = pytest.importorskip("tests.bench.distill_stats")
scipy_stats = pytest.importorskip("scipy.stats")


# --- the generator ----------------------------------------------------------------------------------------------


def test_levels_parse_and_refuse():
    assert ar.parse_level("d2o3") == ar.Level(2, 3, "+-") and ar.parse_level("d1o4x") == ar.Level(1, 4, "+-*")
    assert ar.Level(3, 2).name == "d3o2" and ar.Level(2, 3, "+-*").name == "d2o3x" and ar.Level(1, 2, "+").name == "d1o2p"
    assert ar.parse_level("d2o2p") == ar.Level(2, 2, "+")
    assert ar.parse_level("d3r1o2p") == ar.Level(3, 2, "+", rest=1) and ar.Level(3, 2, "+", rest=1).name == "d3r1o2p"
    assert ar.parse_level("wd1o2").words and ar.parse_level("d2r2o2") == ar.Level(2, 2)
    # distinct problems: 10 x 10 one-digit sums; 900 x (10 + 10) for d3r1o2
    assert ar.Level(1, 2, "+").capacity() == 100 and ar.parse_level("d3r1o2").capacity() == 18_000
    assert len({p["question"] for p in ar.generate(5, ar.Level(1, 2, "+"), 100)}) == 100  # every one of them
    assert all(len(p["question"].split()[1]) == 3 and len(p["question"].split()[3].rstrip(".")) == 1
               for p in ar.generate(1, ar.parse_level("d3r1o2p"), 50))
    assert all("-" not in p["question"] for p in ar.generate(1, ar.parse_level("d2o4p"), 50))
    for bad in ("2o3", "d2", "d0o3", "d2o1", "d2o9"):
        with pytest.raises(ValueError):
            ar.parse_level(bad)


def test_generation_is_seeded_and_its_answers_are_right():
    level = ar.parse_level("d2o3x")
    a, b = ar.generate(1, level, 200), ar.generate(1, level, 200)
    assert a == b and a != ar.generate(2, level, 200)
    assert len({p["question"] for p in a}) == 200
    for p in a:
        expression = p["question"].removeprefix("Calculate ").removesuffix(".")
        assert eval(expression) == p["result"]  # noqa: S307  (digits and + - * only, made above)
        assert p["answer"].endswith(f"\n#### {p['result']}")
        assert ar.correct(p["answer"], p["result"])
        for line in p["answer"].splitlines()[:-1]:  # every worked step is right
            left, right = line.split(" = ")
            assert eval(left) == int(right)  # noqa: S307
    assert ar.generate(1, level, 10) == a[:10]  # a longer draw extends a shorter one


def test_splits_are_disjoint_and_exclude_works():
    level = ar.parse_level("d1o2")  # 10 x 10 x 2 = 200 distinct problems: duplicates are drawn often
    parts = ar.splits(7, level, {"test": 60, "calib": 40, "pool": 80})
    assert [len(v) for v in parts.values()] == [60, 40, 80]
    texts = [p["question"] for v in parts.values() for p in v]
    assert len(texts) == len(set(texts)) == 180
    assert all(p["split"] == name for name, v in parts.items() for p in v)
    more = ar.generate(8, level, 15, exclude=set(texts))
    assert not {p["question"] for p in more} & set(texts)
    with pytest.raises(ValueError, match="too few distinct problems"):
        ar.generate(9, level, 10, exclude=set(texts) | {p["question"] for p in more})


def test_difficulty_changes_with_the_knob():
    """More digits and more operands: larger numbers and more steps."""
    def mean(level, key):
        rows = ar.generate(3, ar.parse_level(level), 300)
        return sum(key(p) for p in rows) / len(rows)

    steps = lambda p: p["answer"].count("\n")  # noqa: E731
    size = lambda p: abs(p["result"])  # noqa: E731
    assert mean("d1o3", steps) == 2 and mean("d1o4", steps) == 3
    assert mean("d1o3", size) < mean("d2o3", size) < mean("d3o3", size)
    assert all(len(str(n)) == 3 for p in ar.generate(3, ar.parse_level("d3o2"), 50)
               for n in p["question"].removeprefix("Calculate ").removesuffix(".").split()[::2])


def test_word_problems_never_go_below_zero_and_the_example_stays_out():
    level = ar.parse_level("wd1o3")
    for p in ar.generate(2, level, 300):
        running = None
        for line in p["answer"].splitlines()[:-1]:
            left, right = line.split(" = ")
            assert eval(left) == int(right) >= 0  # noqa: S307
            running = int(right)
        assert running == p["result"]
    shown = ar.example(level)["question"]
    assert shown in ar.system_prompt(level, True) and ar.system_prompt(level) == ar.SYSTEM
    parts = ar.splits(3, ar.parse_level("d1o2"), {"a": 90, "b": 100})  # 190 of the 200 problems, none the example
    assert ar.example(ar.parse_level("d1o2"))["question"] not in {p["question"] for v in parts.values() for p in v}


def test_final_answers_follow_verify_math():
    assert ar.final_answer("12 + 3 = 15\n#### 15") == 15
    assert ar.final_answer("#### -1,204.") == -1204
    assert ar.final_answer("so 47 + 38 = 85") == 85  # no ####: the last number
    assert ar.final_answer("#### 2.5") is None and ar.final_answer("no number") is None
    assert ar.correct("the answer:\n#### 403", 403) and not ar.correct("#### 404", 403)


# --- statistics -------------------------------------------------------------------------------------------------


def test_mcnemar_exact_matches_the_binomial_test():
    for b, c in [(0, 0), (3, 0), (10, 4), (25, 40), (7, 7), (1, 12)]:
        expected = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
        assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
    assert stats.mcnemar_exact(6, 0) == pytest.approx(2 / 64)  # by hand: 2 * 0.5^6
    assert stats.discordant([True, True, False, False], [True, False, True, True]) == (1, 2)
    with pytest.raises(ValueError):
        stats.discordant([True], [True, False])


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4*0.01, 3*0.02, max(.06, 2*.03), max(.06, .5)
    assert stats.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.04]) == [0.04]
    adjusted = stats.holm([0.03, float("nan"), 0.01])  # a comparison too small to test is not in the family
    assert adjusted[0] == pytest.approx(0.03) and adjusted[2] == pytest.approx(0.02) and math.isnan(adjusted[1])


def test_paired_interval_and_t_test_match_scipy():
    diffs = [0.012, -0.004, 0.03, 0.018]
    mean, lo, hi = stats.paired_ci(diffs)
    ref = scipy_stats.ttest_1samp(diffs, 0.0)
    low, high = ref.confidence_interval(0.95)
    assert (mean, lo, hi) == pytest.approx((sum(diffs) / 4, low, high))
    assert stats.paired_t_p(diffs) == pytest.approx(ref.pvalue)
    assert math.isnan(stats.paired_t_p([0.1])) and stats.paired_t_p([0.1, 0.1]) == 0.0
    assert stats.mean_ci([0.5])[0] == 0.5


def test_minimum_detectable_effects():
    # paired t: at the MDE the power is exactly 0.8; near the normal formula's value for many replicates
    sd, k = 0.02, 4
    mde = stats.mde_paired_t(sd, k)
    df, crit = k - 1, scipy_stats.t.ppf(0.975, k - 1)
    nc = mde * math.sqrt(k) / sd
    assert scipy_stats.nct.sf(crit, df, nc) + scipy_stats.nct.cdf(-crit, df, nc) == pytest.approx(0.8, abs=1e-6)
    # 4 seeds: about (t_.975,3 + t_.8,3) * sd / 2 = 0.0416, much wider than the normal (1.96 + 0.84) * 0.01 = 0.028
    assert 0.0416 < mde < 0.0416 * 1.05
    rng = np.random.default_rng(0)  # simulated: the t test over 4 seeds at that mean rejects about 80% of the time
    sims = rng.normal(mde, sd, size=(20000, k))
    tvals = sims.mean(1) / (sims.std(1, ddof=1) / math.sqrt(k))
    assert (np.abs(tvals) > crit).mean() == pytest.approx(0.8, abs=0.015)
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert stats.mde_paired_t(sd, 400) == pytest.approx(z * sd / 20, rel=0.01)
    # McNemar: n = 500 problems, 20% discordant; Connor's n for that difference gives back 500
    d = stats.mde_mcnemar(0.2, 500)
    za, zb = scipy_stats.norm.ppf(0.975), scipy_stats.norm.ppf(0.8)
    assert (za * math.sqrt(0.2) + zb * math.sqrt(0.2 - d * d)) ** 2 / d ** 2 == pytest.approx(500)
    assert 0.05 < d < 0.06 and stats.mde_mcnemar(0.2, 2000) < d  # more problems, smaller effects
    # simulated: McNemar at the MDE rejects about 80% of the time
    rng = random.Random(0)
    p10, p01 = (0.2 + d) / 2, (0.2 - d) / 2
    hits = 0
    for _ in range(400):
        draws = [rng.random() for _ in range(500)]
        b, c = sum(x < p10 for x in draws), sum(p10 <= x < p10 + p01 for x in draws)
        hits += stats.mcnemar_exact(b, c) < 0.05
    assert 0.70 < hits / 400 < 0.88


def test_wilson_interval():
    lo, hi = stats.wilson(50, 500)
    assert (lo, hi) == pytest.approx((0.07676, 0.12939), abs=1e-4)  # by the formula, z = 1.95996
    assert stats.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


# --- the report -------------------------------------------------------------------------------------------------


def test_the_report_pairs_arms_by_seed_and_keeps_a_pilot_per_temperature(tmp_path, capsys):
    import json

    from tests.bench.distill_report import report

    (tmp_path / "pilot").mkdir()
    (tmp_path / "results").mkdir()
    for name, t, rate in (("pilot", 1.0, 0.12), ("pilot-T0.7", 0.7, 0.07)):
        level = {"rows": 100, "right": round(100 * rate), "rate": rate, "truncated": 3, "mean_tokens": 60,
                 "capacity": 4000}
        (tmp_path / "pilot" / f"{name}.json").write_text(json.dumps(
            {"levels": {"d1o3": level}, "pick": None, "temperature": t, "needed": 2800}))
    rng = random.Random(5)
    for seed in (1, 2, 3):
        base = [int(rng.random() < 0.2) for _ in range(50)]
        better = [1 if x or rng.random() < 0.3 else 0 for x in base]  # gold answers a superset, never fewer
        for arm, correct in (("random", base), ("gold", better)):
            rec = {"arm": arm, "seed": seed, "correct": correct, "accuracy": sum(correct) / 50, "rows": 80,
                   "verified": 5, "train_tokens": 1000, "train_seconds": 1.0,
                   "gold_nll": 1.0 if arm == "random" else 0.5 + 0.01 * seed, "temperature": 1.0,
                   "held_nll": 2.0, "kd_kl": 1.0}
            (tmp_path / "results" / f"{arm}-s{seed}.json").write_text(json.dumps(rec))
    report(tmp_path, [("gold", "random")], ["random", "gold"])
    out = capsys.readouterr().out
    assert "teacher at T = 1," in out and "teacher at T = 0.7," in out  # both pilots, neither overwrote the other
    row = next(line for line in out.splitlines() if line.startswith("| gold - random"))
    diffs = [float(x) for x in row.split("|")[2].split(",")]
    assert all(d > 0 for d in diffs) and len(diffs) == 3  # gold is right wherever random is, and more
    assert "/0 " in row.split("|")[5]  # pooled McNemar: c = 0, no problem only random gets right
    secondary = [line for line in out.splitlines() if line.startswith("| gold - random")][1]
    cells = secondary.split("|")
    assert all(float(d) < 0 for d in cells[2].split(","))  # gold's NLL lower in every seed
    assert float(cells[4]) == pytest.approx(float(cells[5]))  # one comparison: Holm leaves its p as it is
