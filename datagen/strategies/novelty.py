"""Novelty checks for expansion: is a candidate too close to an item that already exists?

An expansion step compares each candidate with every existing item: the demonstration source's rows and the items
accepted so far (including the ones accepted earlier in the same round), in a fixed order, so the same candidates
always get the same verdicts. A candidate is rejected when
- its text is empty, or equal to an existing item after normalisation (case, spacing: always checked);
- its ROUGE-L F-measure against an existing item is at or over `max_rouge_l` (Self-Instruct drops >= 0.7), on the
  tokens of Google's `rouge-score` package (the implementation Self-Instruct used): lower-cased ASCII letters and
  digits, no stemming, so text in other scripts has no tokens and never matches;
- the cosine similarity of its embedding with an existing item's is at or over `max_cosine` (vectors from
  datagen/embed/encode.py, cached in the store's `embeddings` table).
The verdict names the nearest offending item (`duplicate_of`) and its similarity (`score`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from datagen.text import normalise
from datagen.verdict import Verdict

# float tolerance, so a pair exactly on a threshold counts as at it ("at or over"); float32 vectors need a wider one
EPS = 1e-9
EPS_COSINE = 1e-6


class RougeL:
    """ROUGE-L F-measure, 2 * LCS / (len(a) + len(b)) over rouge-score's tokens (the same tokens, so the same scores,
    as `rouge_score.rouge_scorer`, which Self-Instruct used; tests/test_expand.py checks that). The LCS comes from
    rapidfuzz (C++) rather than rouge_scorer's pure-Python table, whose module also imports all of nltk (seconds)."""

    def __init__(self):
        from rapidfuzz.distance import LCSseq
        from rouge_score.tokenize import tokenize

        self._lcs = LCSseq.similarity
        self._tokenize = tokenize

    def tokens(self, text: str) -> list[str]:
        return self._tokenize(text, None)

    def score(self, a: str, b: str) -> float:
        return self.f_tokens(self.tokens(a), self.tokens(b))

    def f_tokens(self, a: list[str], b: list[str], at_least: float = 0.0) -> float:
        """F of two token lists; 0.0 when it is certainly under `at_least` (the LCS stops early)."""
        total = len(a) + len(b)
        if not a or not b:
            return 0.0
        cutoff = max(0, math.ceil(at_least * total / 2 - EPS * total))
        return 2 * self._lcs(a, b, score_cutoff=cutoff) / total

    def best_over(self, candidate: str, items: list[list[str]], threshold: float) -> tuple[int, float] | None:
        """(index, score) of the most similar item (as token lists) at or over `threshold`, else None."""
        cand = self.tokens(candidate)
        best: tuple[int, float] | None = None
        for i, other in enumerate(items):
            f = self.f_tokens(cand, other, threshold)
            if f >= threshold - EPS and (best is None or f > best[1]):
                best = (i, f)
        return best


class NoveltyIndex:
    """The existing items of one expansion step; `check` judges a candidate, `add` makes an accepted one existing."""

    def __init__(self, max_rouge_l: float | None, max_cosine: float | None,
                 embed: Callable[[list[str], list[str]], np.ndarray] | None):
        self.max_rouge_l = max_rouge_l
        self.max_cosine = max_cosine
        self.embed = embed if max_cosine is not None else None
        self.rouge = RougeL() if max_rouge_l is not None else None
        self.ids: list[str] = []
        self.tokens: list[list[str]] = []
        self.exact: dict[str, str] = {}
        self._vectors = np.empty((0, 0), dtype=np.float32)  # rows [0, n) in use; grown by doubling
        self._n = 0

    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: self._n]

    def add_many(self, ids: list[str], texts: list[str], vectors: np.ndarray | None = None) -> None:
        if self.embed is not None and vectors is None and texts:
            vectors = self.embed(texts, ids)
        for rid, text in zip(ids, texts):
            self.ids.append(rid)
            self.exact.setdefault(normalise(text), rid)
            if self.rouge is not None:
                self.tokens.append(self.rouge.tokens(text))
        if self.embed is not None and texts:
            self._append(np.asarray(vectors, dtype=np.float32))

    def _append(self, block: np.ndarray) -> None:
        """Amortised O(1) per accepted item (a vstack per accept would copy the whole pool every time)."""
        if self._n + len(block) > len(self._vectors):
            grown = np.empty((max(2 * len(self._vectors), self._n + len(block), 64), block.shape[1]), np.float32)
            if self._n:
                grown[: self._n] = self._vectors[: self._n]
            self._vectors = grown
        self._vectors[self._n: self._n + len(block)] = block
        self._n += len(block)

    def check(self, text: str, vector: np.ndarray | None = None) -> Verdict:
        if not text.strip():
            return Verdict(False, "empty output")
        same = self.exact.get(normalise(text))
        if same is not None:
            return Verdict(False, "exact duplicate (after case and spacing normalisation)", 1.0, same)
        if self.rouge is not None and self.tokens:
            best = self.rouge.best_over(text, self.tokens, self.max_rouge_l)
            if best is not None:
                i, f = best
                return Verdict(False, f"ROUGE-L {f:.3f} >= max_rouge_l {self.max_rouge_l}", f, self.ids[i])
        if self.embed is not None and self._n:
            sims = self.vectors @ np.asarray(vector, dtype=np.float32)
            i = int(np.argmax(sims))
            if sims[i] >= self.max_cosine - EPS_COSINE:
                return Verdict(False, f"cosine {sims[i]:.3f} >= max_cosine {self.max_cosine}", float(sims[i]),
                               self.ids[i])
        return Verdict(True, "novel")
