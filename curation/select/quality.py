"""Quality and difficulty as ranks in [0, 1] (1 is best), so criteria on different scales can be averaged."""

from __future__ import annotations

import numpy as np

from datagen.text import as_text, numeric


def percentile_ranks(values: list[float | None], higher_is_better: bool = True) -> np.ndarray:
    """Average-rank percentiles: the best value gets 1, the worst 0, ties share a rank; missing values get 0."""
    present = [i for i, v in enumerate(values) if v is not None]
    out = np.zeros(len(values))
    if len(present) <= 1:
        out[present] = 1.0
        return out
    data = np.array([values[i] for i in present], dtype=float)
    _, inverse, counts = np.unique(data if higher_is_better else -data, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each distinct value, in ascending order
    average = ends - (counts - 1) / 2.0
    out[present] = (average[inverse] - 1) / (len(present) - 1)
    return out


def quality_ranks(rows: list[dict], column: str, order: str = "highest") -> np.ndarray:
    return percentile_ranks([numeric(r.get(column)) for r in rows], higher_is_better=(order == "highest"))


def length_ranks(rows: list[dict], column: str) -> np.ndarray:
    """Longer text ranks higher: s1's proxy for a harder question is a longer reasoning trace. A text column counts
    its characters; a number column is a length already (`_reasoning_tokens`, a trace's tokens) and ranks by value."""
    return percentile_ranks([length(r.get(column)) for r in rows])


def length(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return numeric(value)
    return float(len(as_text(value)))
