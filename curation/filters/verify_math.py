"""`verify_math`: the row's final answer against a reference answer, compared by the `math-verify` package.

Final answers are found the way math datasets write them: GSM8K's `#### x` line, else the last LaTeX `\\boxed{x}`,
else the last number in the text; a spec's `answer_pattern` / `reference_pattern` replaces that. math-verify then
compares the two as mathematics (1,000 = 1000, \\frac{1}{2} = 0.5, 72.00 = 72), falling back to comparing the
normalised strings when it cannot parse one side.
"""

from __future__ import annotations

from datagen.answers import extract_answer, last_boxed, same_answer  # noqa: F401  (re-exported)
from datagen.text import as_text
from datagen.verdict import Verdict

def verify_math_filter(spec, rows: list[dict]) -> list[Verdict]:
    out = []
    for row in rows:
        reference = extract_answer(as_text(row.get(spec.reference)), spec.reference_pattern)
        if reference is None:
            out.append(Verdict(False, f"no final answer found in reference {spec.reference}", None))
            continue
        answer = extract_answer(as_text(row.get(spec.column)), spec.answer_pattern)
        if answer is None:
            out.append(Verdict(False, "no final answer found", 0.0))
        elif same_answer(reference, answer):
            out.append(Verdict(True, f"answer {answer[:40]} = reference", 1.0))
        else:
            out.append(Verdict(False, f"answer {answer[:40]} != reference {reference[:40]}", 0.0))
    return out
