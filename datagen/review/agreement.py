"""How well a judge step agrees with people: Cohen's kappa between its verdicts and people's pass/fail, Spearman's
rank correlation between its scores and people's 1-5 scores, each with the number of rows it rests on.

A scoring judge gives a number on its scale; its verdict is "pass" when the score is at least the scale's midpoint.
A judged row counts once: the judge's mean score over its samples, a person's latest rating (datagen/store/human.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from datagen.spec.plan import Plan
from datagen.store.human import judged_ratings
from datagen.store.reads import relation_exists


@dataclass
class Agreement:
    judge: str
    pass_at: float  # the judge's score at and above which its verdict is pass
    kappa: float | None  # None: fewer than 2 rows, or undefined (every verdict on both sides the same)
    kappa_rows: int
    observed: float | None  # the share of rows where the verdicts agree
    spearman: float | None
    spearman_rows: int

    def as_dict(self) -> dict:
        return dict(vars(self))

    def line(self) -> str:
        """One line for `datagen status`."""
        parts = []
        if self.kappa_rows:
            kappa = "undefined" if self.kappa is None else f"{self.kappa:.2f}"
            parts.append(f"Cohen's kappa {kappa} on {self.kappa_rows} pass/fail rows (agree on "
                         f"{self.observed:.0%}; judge pass = score >= {self.pass_at:g})")
        if self.spearman_rows:
            rho = "undefined" if self.spearman is None else f"{self.spearman:.2f}"
            parts.append(f"Spearman {rho} on {self.spearman_rows} rows scored 1-5")
        return f"judge {self.judge} vs people: " + "; ".join(parts)


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two raters' binary verdicts; None when undefined (both always give the same one verdict)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rho (Pearson's r of the ranks); None with fewer than 2 rows or when one side is constant."""
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return None if var == 0 else cov / var


def judge_agreement(con, plan: Plan) -> list[Agreement]:
    """One Agreement per scoring judge step that people rated some of the rows of (none for the others)."""
    out = []
    for st in plan.steps:
        if st.score_scale is None or not relation_exists(con, st.name):
            continue
        rows = judged_ratings(con, st.name, st.spec.output)
        low, high = st.score_scale
        pass_at = (low + high) / 2
        verdicts = [(score >= pass_at, bool(v)) for _, score, v, _ in rows if v is not None]
        scores = [(score, float(h)) for _, score, _, h in rows if h is not None]
        if not verdicts and not scores:
            continue
        kappa = cohen_kappa([j for j, _ in verdicts], [h for _, h in verdicts])
        observed = sum(j == h for j, h in verdicts) / len(verdicts) if verdicts else None
        rho = spearman([j for j, _ in scores], [h for _, h in scores])
        out.append(Agreement(st.name, pass_at, kappa, len(verdicts), observed, rho, len(scores)))
    return out
