"""Final answers, found the way math datasets write them and compared as mathematics.

GSM8K's `#### x` line, else the last LaTeX `\\boxed{x}`, else the last number in the text; a caller's pattern
replaces that. The `math-verify` package compares two answers (1,000 = 1000, \\frac{1}{2} = 0.5, 72.00 = 72),
falling back to comparing the normalised strings when it cannot parse one side. Used by the `verify_math` filter,
self-consistency votes, the student probe and training's accuracy.
"""

from __future__ import annotations

import re

from datagen.text import normalise

_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str, pattern: str | None = None) -> str | None:
    """The final answer in `text`, or None when there is none."""
    if pattern is not None:
        matches = list(re.finditer(pattern, text))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if last.groups() else last.group(0)).strip()
    hashes = _HASHES.findall(text)
    if hashes and hashes[-1].strip():
        return hashes[-1].strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...}, braces matched (so \\boxed{\\frac{1}{2}} gives \\frac{1}{2})."""
    start = text.rfind("\\boxed")
    while start != -1:
        brace = text.find("{", start)
        if brace != -1 and text[start + len("\\boxed"): brace].strip() == "":
            depth = 0
            for i in range(brace, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[brace + 1: i].strip()
        start = text.rfind("\\boxed", 0, start)
    return None


def same_answer(reference: str, answer: str) -> bool:
    from math_verify import parse, verify

    gold, pred = parse(_as_math(reference)), parse(_as_math(answer))
    if gold and pred:
        return bool(verify(gold, pred))
    return normalise(reference).rstrip(".") == normalise(answer).rstrip(".")


def _as_math(answer: str) -> str:
    # a bare LaTeX expression parses only inside math delimiters; plain text and numbers parse either way
    return f"${answer}$" if "\\" in answer and "$" not in answer else answer
