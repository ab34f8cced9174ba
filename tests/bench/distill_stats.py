"""The statistics of tests/bench/distill_arith.py (issue 30): paired comparisons of students on the same test problems.

- `mcnemar_exact(b, c)`: McNemar's exact test on one seed's paired answers (b: problems only the first arm gets
  right, c: only the second), the two-sided binomial test of b against b + c at 1/2.
- `paired_ci(diffs)`: mean of per-seed differences with a t interval (the seeds are the replicates: each draws its
  own training rows and order, so the interval covers that variation, which McNemar's per-seed test does not).
- `paired_t_p(diffs)`: the two-sided one-sample t test of those differences.
- `holm(ps)`: Holm's step-down adjustment over a family of planned comparisons.
- `mde_paired_t(sd, k)`: the smallest true mean difference the paired t test over k seeds detects with the given
  power (exact, through the noncentral t).
- `mde_mcnemar(discordant, n)`: the same for McNemar's test on n paired answers with a discordance rate
  (Connor 1987's normal approximation), per seed or, with n = seeds x problems, pooled.
- `mean_ci(values)`, `wilson(k, n)`: an arm's accuracy interval over seeds, or of one run.

scipy does the distributions (installed beside the stack; `pip install scipy` otherwise).
"""

from __future__ import annotations

import math


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p (1.0 when no answer differs)."""
    from scipy.stats import binom

    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * float(binom.cdf(min(b, c), n, 0.5)))


def discordant(first: list[bool], second: list[bool]) -> tuple[int, int]:
    """(b, c): problems only `first` gets right, only `second` gets right."""
    if len(first) != len(second):
        raise ValueError(f"paired answers need the same problems: {len(first)} vs {len(second)}")
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    return b, c


def holm(ps: list[float]) -> list[float]:
    """Holm-adjusted p values, in the order given (monotone, capped at 1). A NaN p (a comparison with too few seeds
    to test) stays NaN and is not counted in the family."""
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    m = len(order)
    out = [float("nan")] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t interval over the values (NaN bounds for fewer than 2)."""
    from scipy.stats import t

    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = float(t.ppf(0.5 + level / 2, k - 1)) * sd / math.sqrt(k)
    return mean, mean - half, mean + half


paired_ci = mean_ci  # of the per-seed differences


def paired_t_p(diffs: list[float]) -> float:
    """Two-sided p of the one-sample t test of the differences against 0 (NaN for fewer than 2)."""
    from scipy.stats import t

    k = len(diffs)
    if k < 2:
        return float("nan")
    mean = sum(diffs) / k
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (k - 1))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * t.sf(abs(mean) / (sd / math.sqrt(k)), k - 1))


def mde_paired_t(sd: float, k: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true mean difference the two-sided paired t test over k replicates (sd of the differences) detects with
    `power` at level `alpha` (NaN for fewer than 2 replicates)."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if k < 2 or not sd > 0:
        return float("nan") if k < 2 else 0.0
    df = k - 1
    crit = float(t.ppf(1 - alpha / 2, df))

    def achieved(delta: float) -> float:
        nc = delta * math.sqrt(k) / sd
        reached = float(nct.sf(crit, df, nc) + nct.cdf(-crit, df, nc))
        return (1.0 if math.isnan(reached) else reached) - power  # scipy's nct is NaN far in the tail, where it is 1

    high = sd / math.sqrt(k)
    while achieved(high) < 0:
        high *= 2
    return float(brentq(achieved, 1e-12 * sd, high))


def mde_mcnemar(discordance: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The difference in accuracy (p10 - p01) McNemar's test on n paired answers detects with `power`, when a share
    `discordance` (p10 + p01) of the answers differ (Connor 1987: n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if not 0 < discordance <= 1 or n < 1:
        return float("nan")
    za, zb = float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))

    def needed(d: float) -> float:
        return (za * math.sqrt(discordance) + zb * math.sqrt(max(discordance - d * d, 0.0))) ** 2 / (d * d) - n

    top = math.sqrt(discordance)
    if needed(top) > 0:
        return float("nan")  # not detectable at this n
    return float(brentq(needed, 1e-9, top))


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n."""
    from scipy.stats import norm

    if n == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + level / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half
