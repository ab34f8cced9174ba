"""Strategies: the ways of getting knowledge from a teacher (DESIGN.md section 2), one module each.

`STRATEGIES` is the whole mechanism: the spec's `strategy` value -> the module that implements base.Strategy.
A new strategy is its own module and one `add(...)` line here (CONTRIBUTING.md, "Adding a strategy").
"""

from __future__ import annotations

from types import ModuleType

from datagen.spec.models import register_step
from datagen.strategies import agent, conversation, expand, judge, label, meta, score, self_consistency
from datagen.strategies.base import INTERFACE, Strategy

STRATEGIES: dict[str, Strategy] = {}


def add(module: ModuleType) -> None:
    """Register a strategy module: its `STEP` model joins the spec language under its `strategy` name."""
    missing = [name for name in INTERFACE if not hasattr(module, name)]
    if missing:
        raise TypeError(f"strategy module {module.__name__} lacks {', '.join(missing)} (strategies/base.py, "
                        "class Strategy, says what each does)")
    STRATEGIES[register_step(module.STEP)] = module  # type: ignore[assignment]


add(label)
add(expand)
add(meta)
add(judge)
add(self_consistency)
add(conversation)
add(agent)
add(score)


def strategy_of(step) -> Strategy:
    return STRATEGIES[step.strategy]
