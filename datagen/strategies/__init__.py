"""Strategies: the ways of getting knowledge from a teacher (DESIGN.md section 2), one module each.

`STRATEGIES` is the whole mechanism: the spec's `strategy` value -> the module that implements base.Strategy.
A new strategy is its own module and one line here.
"""

from __future__ import annotations

from datagen.strategies import expand, judge, label, meta, self_consistency
from datagen.strategies.base import Strategy

STRATEGIES: dict[str, Strategy] = {
    "label": label,
    "expand": expand,
    "meta": meta,
    "judge": judge,
    "self": self_consistency,
}


def strategy_of(step) -> Strategy:
    return STRATEGIES[step.strategy]
