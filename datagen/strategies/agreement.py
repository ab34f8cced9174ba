"""Several teachers on one input: how far their answers agree, and a majority vote.

`agreement: {column, extract}` reads each row's answer from `column` with the regular expression `extract` (Python
`re`; its last match in the text, group 1 if the pattern has a group, else the whole match, stripped). Per input, the
majority answer is the commonest one (a tie goes to the answer of the earliest row, in the order of the `teacher`
list and then of `_sample_index`); `agreement` is the share of the input's rows (one per teacher and sample) whose
answer is the majority answer. With `vote: majority` the view keeps one row per input: the earliest row with the
majority answer. Both are recomputed from the stored rows at the end of the step and kept as `decisions` rows
(stage: the step's name; `score` is the agreement; a dropped row's `duplicate_of` names the kept one).
"""

from __future__ import annotations

import re
from collections import Counter

from datagen.spec.load import LoadedSpec
from datagen.spec.models import LabelStep
from datagen.spec.plan import PlannedStep
from datagen.store import reads
from datagen.store.decisions import replace_decisions, step_owner
from datagen.verdict import Verdict

COLUMN = "agreement"


def plan_agreement(loaded: LoadedSpec, loc: tuple, step: LabelStep, input_cols: list[str], produced: dict,
                   n_teachers: int) -> dict[str, str]:
    """The column agreement adds, after checking the `agreement` and `vote` keys."""
    if step.agreement is None:
        raise loaded.error(loc + ("vote",), "vote: majority needs `agreement: {column: ..., extract: ...}` to read "
                                            "each row's answer")
    spec = step.agreement
    if spec.column not in input_cols and spec.column not in produced:
        shown = ", ".join(c for c in list(input_cols) + list(produced) if not c.startswith("_"))
        raise loaded.error(loc + ("agreement", "column"), f"`{spec.column}` is not a column of this step's rows; "
                                                          f"columns: {shown}")
    try:
        re.compile(spec.extract)
    except re.error as exc:
        raise loaded.error(loc + ("agreement", "extract"), f"not a valid regular expression: {exc}") from None
    if n_teachers * step.n < 2:
        raise loaded.error(loc + ("agreement",), "agreement compares several rows per input: list several teachers "
                                                 "(teacher: [a, b, c]) or set n above 1")
    if COLUMN in input_cols or COLUMN in produced:
        raise loaded.error(loc + ("agreement",), f"agreement adds an `{COLUMN}` column, which this step's rows "
                                                 "already have; rename that column")
    return {COLUMN: "DOUBLE"}


def extract(pattern: re.Pattern, text) -> str | None:
    if text is None:
        return None
    last = None
    for last in pattern.finditer(str(text)):  # noqa: B007  the loop keeps the last match
        pass
    if last is None:
        return None
    answer = (last.group(1) if pattern.groups else last.group(0)) or ""
    return answer.strip() or None


def judge_input(rows: list[dict], vote: bool) -> list[tuple[str, Verdict]]:
    """Verdicts for one input's rows, given in teacher-list and sample order, each with its `answer`."""
    counts = Counter(r["answer"] for r in rows if r["answer"] is not None)
    if not counts:
        return [(r["_id"], Verdict(not vote, "no answer matched `extract`", 0.0)) for r in rows]
    best = max(counts.values())
    majority = next(r["answer"] for r in rows if counts.get(r["answer"]) == best)
    share = best / len(rows)
    kept_id = next(r["_id"] for r in rows if r["answer"] == majority)
    out = []
    for r in rows:
        said = f"answer {r['answer']!r}" if r["answer"] is not None else "no answer"
        why = f"{said}; {best} of {len(rows)} rows give the majority answer {majority!r}"
        if not vote or r["_id"] == kept_id:
            out.append((r["_id"], Verdict(True, why, share)))
        elif r["answer"] == majority:
            out.append((r["_id"], Verdict(False, f"{why}; an earlier row with it is kept", share, kept_id)))
        else:
            out.append((r["_id"], Verdict(False, f"{why}; outvoted", share, kept_id)))
    return out


def decide(con, st: PlannedStep) -> None:
    """Recompute every current row's answer, agreement and vote, and store them as this step's decisions."""
    spec = st.spec.agreement
    pattern = re.compile(spec.extract)
    order = {name: i for i, name in enumerate(st.teachers)}
    rows = reads.all_step_rows(con, st.view, ["_id", "_parent_id", "_teacher", "_sample_index", spec.column])
    rows.sort(key=lambda r: (order.get(r["_teacher"], len(order)), r["_sample_index"], r["_id"]))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["_parent_id"], []).append({"_id": r["_id"], "answer": extract(pattern, r[spec.column])})
    verdicts = [v for group in groups.values() for v in judge_input(group, st.spec.vote == "majority")]
    replace_decisions(con, step_owner(st.name), [(st.name, rid, v) for rid, v in verdicts])
