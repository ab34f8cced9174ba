"""Text helpers shared by filters, decontamination and dedup: one definition of "normalised" and of "word n-gram"."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Any

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


def as_text(value: Any) -> str:
    """A cell as text: None is empty, everything else is str()."""
    return "" if value is None else str(value)


def numeric(value: Any) -> float | None:
    """A cell as a number, or None when it is missing, a bool, not a number or NaN."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: texts that differ only in case and spacing become equal."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def words(text: str) -> list[str]:
    """Lower-cased word tokens with punctuation dropped (for n-gram overlap, where punctuation is noise)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def ngrams(tokens: list[str], n: int) -> list[str]:
    return [" ".join(tokens[i: i + n]) for i in range(len(tokens) - n + 1)]
