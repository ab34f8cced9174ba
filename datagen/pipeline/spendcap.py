"""The spend cap (`budget: {max_usd}`, `datagen run --max-usd`): before a request or a batch is sent, its
worst-case cost is reserved; what would take spent plus reserved past the cap is not sent.

The cap covers everything the store has spent (every run of the spec), so a re-run with the same cap sends nothing
more and a re-run with a higher one continues where the last stopped. The worst case of a request is every sample
reading the prompt at its byte count (no tokenizer makes more tokens than bytes) and writing `max_tokens`, so what
is actually spent never passes the cap. Requests of a teacher without a price are not limited.
"""

from __future__ import annotations

from datagen.pipeline.cost import usd
from datagen.errors import RunFailed


class BudgetExhausted(RunFailed):
    """The cap stopped the run; finished work is kept (the CLI exits 1)."""


class SpendCap:
    def __init__(self, max_usd: float, spent: float):
        self.max_usd = max_usd
        self.spent = spent  # what the store has recorded as spent
        self.reserved = 0.0  # worst cases of what is out and not yet settled

    def admit(self, worst_costs: list[float]) -> int:
        """How many of these requests, in order, fit under the cap at their worst cases; those are reserved."""
        n = 0
        for cost in worst_costs:
            if self.spent + self.reserved + cost > self.max_usd:
                break
            self.reserved += cost
            n += 1
        return n

    def settle(self, reserved: float, actual: float) -> None:
        """Requests reserved at `reserved` came back having cost `actual` (never more)."""
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual

    def exhausted(self, step: str, left: int, left_worst: float) -> BudgetExhausted:
        return BudgetExhausted(
            f"budget: {usd(self.spent)} spent of the {usd(self.max_usd)} cap; step {step} has {left} requests left "
            f"undone (worst case {usd(left_worst)}) and what comes after it did not start. Finished work is kept; to "
            f"continue, raise `budget.max_usd` in the spec or run `datagen run SPEC --max-usd AMOUNT` (at least "
            f"{usd(self.spent + left_worst)} to finish this step at its worst case): nothing is sent twice")
