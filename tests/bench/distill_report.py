"""The tables of tests/bench/distill_arith.py (issue 30), from its cached results (results/*.json under --cache).

Accuracy is exact match on the test problems; a seed is one replicate (its own random rows and training order), so
intervals over seeds are t intervals with seeds - 1 degrees of freedom. Per planned comparison: the per-seed
differences in accuracy (percentage points), their mean with a 95% t interval, McNemar's exact p per seed (b: test
problems only the arm gets right, c: only the baseline) and pooled over seeds (sum of b against sum of c: the
chance that these trained students differ, not that the method does), the paired t test over seeds (the test of the
method: it sees the variation between seeds), both Holm-adjusted over the planned comparisons, and the minimum
detectable effect at 80% power and alpha 0.05 (unadjusted) for the t test with the observed sd of the differences and
for pooled McNemar with the observed discordance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.bench import distill_stats as st


def load(cache: Path) -> tuple[dict, dict]:
    """(arm -> seed -> result, the base results by name: teacher, truncated, healed, pool, pilot)."""
    runs: dict[str, dict[int, dict]] = {}
    base: dict[str, dict] = {}
    for path in sorted((cache / "results").glob("*.json")):
        rec = json.loads(path.read_text())
        if "seed" in rec and "arm" in rec:
            runs.setdefault(rec["arm"], {})[int(rec["seed"])] = rec
        else:
            base[path.stem] = rec
    for pilot in sorted((cache / "pilot").glob("pilot*.json")):  # one per temperature and prompt
        base[pilot.stem] = json.loads(pilot.read_text())
    return runs, base


def pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def interval(values: list[float], scale: float = 100, digits: int = 1) -> str:
    mean, lo, hi = st.mean_ci(values)
    if math.isnan(lo):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def teacher_table(base: dict) -> None:
    for key in sorted(k for k in base if k.startswith("pilot")):
        pilot = base[key]
        what = "with a worked example" if pilot.get("example") else "the task's system prompt"
        print(f"\nPilot ({what}): the teacher at T = {pilot.get('temperature', 1.0):g}, one sample per problem\n\n"
              "| level | distinct problems | problems | right | rate | truncated | tokens per answer |\n"
              "|---|---|---|---|---|---|---|")
        for name, r in pilot["levels"].items():
            print(f"| {name} | {r.get('capacity', '-'):,} | {r['rows']} | {r['right']} | {pct(r['rate'])}% | "
                  f"{r['truncated']} | {r['mean_tokens']:.0f} |")
        print(f"\npicked (30-60%, at least {pilot.get('needed', '?')} distinct problems): {pilot['pick']}")
    pool = base.get("pool")
    if pool:
        print(f"\nTeacher's own pass rate at level {pool.get('level')} (verify: exact final answer)\n\n"
              "| set | answers | right | rate | truncated | tokens per answer |\n|---|---|---|---|---|---|")
        for name, what in (("pool", "training pool, T = 1"), ("held_out", "held-out teacher set, T = 1"),
                           ("teacher_test", "test problems, greedy (vLLM)")):
            r = pool[name]
            print(f"| {what} | {r['rows']} | {r['right']} | {pct(r['rate'])}% | {r['truncated']} | "
                  f"{r['mean_tokens']:.0f} |")
    rows = [(n, base[n]) for n in ("teacher", "truncated", "healed") if n in base]
    if rows:
        print("\nStarting points, scored as the arms are\n\n| model | accuracy % | gold NLL at T* | T* | gold NLL at 1 | "
              "held-out teacher NLL | KL to teacher |\n|---|---|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {pct(r['accuracy'])} | {r['gold_nll']:.3f} | {r['temperature']:.2f} | "
                  f"{r['gold_nll_t1']:.3f} | {r.get('held_nll', float('nan')):.3f} | "
                  f"{r.get('kd_kl', float('nan')):.3f} |")


def arm_table(runs: dict, arms: list[str]) -> None:
    print("\nArms: mean [95% t interval over seeds]; accuracy in %\n\n| arm | seeds | rows (right) | training tokens | "
          "train s | accuracy % | per seed | gold NLL at T* | T* | held-out teacher NLL | KL to teacher |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for arm in [a for a in arms if a in runs]:
        rs = [runs[arm][s] for s in sorted(runs[arm])]
        mean = lambda key, rs=rs: sum(r.get(key, float("nan")) for r in rs) / len(rs)  # noqa: E731
        per_seed = ", ".join(pct(r["accuracy"]) for r in rs)
        print(f"| {arm} | {len(rs)} | {mean('rows'):.0f} ({mean('verified'):.0f}) | {mean('train_tokens'):,.0f} | "
              f"{mean('train_seconds'):.0f} | {interval([r['accuracy'] for r in rs])} | {per_seed} | "
              f"{interval([r['gold_nll'] for r in rs], 1, 3)} | {mean('temperature'):.2f} | {mean('held_nll'):.3f} | "
              f"{mean('kd_kl'):.3f} |")


def comparisons(runs: dict, planned: list[tuple[str, str]]) -> list[dict]:
    out = []
    for arm, baseline in planned:
        seeds = sorted(set(runs.get(arm, {})) & set(runs.get(baseline, {})))
        if not seeds:
            continue
        diffs, per, b_all, c_all, n_all = [], [], 0, 0, 0
        for s in seeds:
            first, second = runs[arm][s]["correct"], runs[baseline][s]["correct"]
            b, c = st.discordant([bool(x) for x in first], [bool(x) for x in second])
            diffs.append((sum(first) - sum(second)) / len(first))
            per.append((b, c, st.mcnemar_exact(b, c)))
            b_all, c_all, n_all = b_all + b, c_all + c, n_all + len(first)
        mean, lo, hi = st.paired_ci(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else float("nan")
        out.append({"arm": arm, "baseline": baseline, "seeds": seeds, "diffs": diffs, "mean": mean, "lo": lo, "hi": hi,
                    "mcnemar": per, "pooled": st.mcnemar_exact(b_all, c_all), "b": b_all, "c": c_all,
                    "t_p": st.paired_t_p(diffs), "mde_t": st.mde_paired_t(sd, len(diffs)),
                    "mde_mcnemar": st.mde_mcnemar((b_all + c_all) / n_all, n_all)})
    for key in ("t_p", "pooled"):
        for c, adjusted in zip(out, st.holm([c[key] for c in out])):
            c[f"holm_{key}"] = adjusted
    return out


def comparison_table(found: list[dict]) -> None:
    print("\nPlanned comparisons (arm minus baseline, same seeds, same test problems); differences in percentage "
          "points\n\n| comparison | per seed | mean [95% CI] | McNemar per seed: b/c p | pooled b/c p | paired t p | "
          "Holm (t) | Holm (pooled McNemar) | MDE t | MDE pooled McNemar |\n|---|---|---|---|---|---|---|---|---|---|")
    for c in found:
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in c["diffs"])
        mc = "; ".join(f"{b}/{cc} {p:.3g}" for b, cc, p in c["mcnemar"])
        ci = f"{100 * c['mean']:+.1f}" + ("" if math.isnan(c["lo"]) else f" [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]")
        print(f"| {c['arm']} - {c['baseline']} | {per_seed} | {ci} | {mc} | {c['b']}/{c['c']} {c['pooled']:.3g} | "
              f"{c['t_p']:.3g} | {c['holm_t_p']:.3g} | {c['holm_pooled']:.3g} | {pct(c['mde_t'])} | "
              f"{pct(c['mde_mcnemar'])} |")


def secondary_table(runs: dict, planned: list[tuple[str, str]]) -> None:
    """The gold solutions' NLL at each arm's fitted temperature, paired by seed like the accuracy, Holm-adjusted
    over its own family. For the gold arm it is its own training objective, so gold - random here says nothing new."""
    rows = []
    for arm, baseline in planned:
        seeds = sorted(set(runs.get(arm, {})) & set(runs.get(baseline, {})))
        if seeds:
            diffs = [runs[arm][s]["gold_nll"] - runs[baseline][s]["gold_nll"] for s in seeds]
            rows.append((f"{arm} - {baseline}", diffs, st.paired_t_p(diffs)))
    print("\nSecondary: the gold solutions' NLL per token at T* (arm minus baseline, same seeds; lower is better)\n\n"
          "| comparison | per seed | mean [95% CI] | paired t p | Holm (t) |\n|---|---|---|---|---|")
    for (name, diffs, p), adjusted in zip(rows, st.holm([p for _, _, p in rows])):
        mean, lo, hi = st.paired_ci(diffs)
        ci = f"{mean:+.3f}" + ("" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]")
        print(f"| {name} | {', '.join(f'{d:+.3f}' for d in diffs)} | {ci} | {p:.3g} | {adjusted:.3g} |")


def planning(seeds: int, problems: int) -> None:
    print(f"\nMinimum detectable effect before the run (80% power, alpha 0.05, {problems} problems): McNemar on one "
          "seed / pooled over the seeds, by the share of answers that differ between two arms")
    print("\n| discordance | one seed | " + f"{seeds} seeds pooled |\n|---|---|---|")
    for psi in (0.05, 0.1, 0.2, 0.3):
        print(f"| {psi:.0%} | {pct(st.mde_mcnemar(psi, problems))} | {pct(st.mde_mcnemar(psi, problems * seeds))} |")
    print(f"\npaired t over {seeds} seeds: MDE = {st.mde_paired_t(1.0, seeds):.2f} x the sd of the per-seed "
          "differences" if seeds > 1 else "")


def report(cache: Path, planned: list[tuple[str, str]], arms: list[str]) -> None:
    runs, base = load(cache)
    teacher_table(base)
    if runs:
        arm_table(runs, arms)
        comparison_table(comparisons(runs, planned))
        secondary_table(runs, planned)
    seeds = max((len(v) for v in runs.values()), default=4)
    problems = len(next(iter(next(iter(runs.values())).values()))["correct"]) if runs else 500
    planning(seeds, problems)
    print("\nb: test problems only the arm answers right; c: only the baseline. Holm over the planned comparisons "
          "present. The paired t test is the test of the method (it sees the seed-to-seed variation of the training "
          "rows and order); pooled McNemar tests these trained students.")
