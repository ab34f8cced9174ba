"""Preference pairs from a judge step's rows: (prompt, chosen, rejected), with both sides in `lineage`.

Pairs are a function of the judge's current rows, so they are rebuilt whole at the end of every run of the step
(cheap: no model), and a changed `min_margin` takes effect on a re-run without a request. Each candidate is also a
`decisions` row (stage `pairs:<step>`): kept with why, or dropped with why (margin too small, a tie, the orders
disagree, nothing changed).

- `by: score`: answers of one input ranked by their mean score; the pairs with the largest margins, at least
  `min_margin` (and above 0), up to `max_per_input`.
- `by: verdict` (pairwise): a pair is kept when both orders name the same winner; a disagreement between the orders
  (position bias) or a `tie` verdict is a tie, recorded and not paired.
- revise: each revision is paired with the original it corrects, unless it is the same text.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime, UTC

from datagen.store import reads
from datagen.store.decisions import replace_pairs
from datagen.verdict import Verdict


def pairs_stage(step_name: str) -> str:
    return f"pairs:{step_name}"


def pair_id(step: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256(f"pair\0{step}\0{chosen}\0{rejected}".encode()).hexdigest()[:20]


def build_and_store(con, st) -> tuple[int, int]:
    """Rebuild the step's pairs and their decisions; returns (pairs kept, candidates dropped)."""
    step = st.spec
    answers = reads.answered(con, st.input)
    if step.revise:
        pairs, drops = revision_pairs(con, st, answers)
    elif step.pairwise:
        pairs, drops = verdict_pairs(con, st, answers)
    else:
        pairs, drops = score_pairs(con, st, answers)
    _write(con, step.name, pairs, drops)
    return len(pairs), len(drops)


def _pair(step: str, by: str, chosen_id: str, rejected_id: str, answers: dict, chosen_text: str | None = None,
          scores: tuple = (None, None)) -> dict:
    rejected = answers[rejected_id]
    margin = scores[0] - scores[1] if scores[0] is not None else None
    return {
        "_id": pair_id(step, chosen_id, rejected_id), "step": step, "_parent_id": rejected["input"], "method": by,
        "prompt": rejected["messages"],
        "chosen": chosen_text if chosen_text is not None else answers[chosen_id]["text"],
        "rejected": rejected["text"], "chosen_id": chosen_id, "rejected_id": rejected_id,
        "chosen_score": scores[0], "rejected_score": scores[1], "margin": margin,
        "_created_at": datetime.now(UTC).replace(tzinfo=None),
    }


def _drop(row_id: str, reason: str, score: float | None = None) -> dict:
    return {"row_id": row_id, "reason": reason, "score": score}


def score_pairs(con, st, answers: dict) -> tuple[list[dict], list[dict]]:
    step = st.spec
    scores: dict[str, list[float]] = {}
    for r in reads.rows(con, step.name, ["_parent_id", step.output]):
        if r[step.output] is not None:
            scores.setdefault(r["_parent_id"], []).append(float(r[step.output]))
    by_input: dict[str, list[tuple[float, str]]] = {}
    for rid, values in scores.items():
        score = sum(values) / len(values)
        if rid in answers:
            by_input.setdefault(answers[rid]["input"], []).append((float(score), rid))
    pairs, drops = [], []
    for input_id, scored in sorted(by_input.items()):
        if len(scored) < 2:
            drops.append(_drop(input_id, "only one judged answer for this input: nothing to pair"))
            continue
        candidates = sorted(((a[0] - b[0], a, b) for a in scored for b in scored if a[0] > b[0]),
                            key=lambda c: (-c[0], c[1][1], c[2][1]))
        best = max(s for s, _ in scored) - min(s for s, _ in scored)
        kept = [c for c in candidates if c[0] >= step.pairs.min_margin][: step.pairs.max_per_input]
        if not kept:
            drops.append(_drop(input_id, f"best minus worst score is {best:g}, under min_margin "
                                         f"{step.pairs.min_margin:g}", best))
        for _margin, (cs, cid), (rs, rid) in kept:
            pairs.append(_pair(step.name, "score", cid, rid, answers, scores=(cs, rs)))
    return pairs, drops


def verdict_pairs(con, st, answers: dict) -> tuple[list[dict], list[dict]]:
    step = st.spec
    other = f"{step.output}_other"
    votes: dict[tuple[str, str], list[str]] = {}  # (A, B) as shown -> verdicts
    for r in reads.rows(con, step.name, ["_parent_id", other, step.output]):
        first, second, verdict = r["_parent_id"], r[other], r[step.output]
        votes.setdefault((first, second), []).append(verdict)
    pairs, drops, seen = [], [], set()
    for (a, b) in sorted(votes):
        key = tuple(sorted((a, b)))
        if key in seen or a not in answers or b not in answers:
            continue
        seen.add(key)
        x, y = key
        win_xy, win_yx = _winner(votes.get((x, y)), x, y), _winner(votes.get((y, x)), y, x)
        pid = pair_id(step.name, x, y)
        if votes.get((x, y)) is None or votes.get((y, x)) is None:
            drops.append(_drop(pid, "judged in one order only (the other request failed): no verdict"))
        elif win_xy is None or win_yx is None:
            drops.append(_drop(pid, "the judge called it a tie"))
        elif win_xy != win_yx:
            drops.append(_drop(pid, "the two orders disagree (each preferred the answer shown "
                                    f"{'first' if win_xy == x else 'second'}): position bias, recorded as a tie"))
        else:
            loser = y if win_xy == x else x
            pairs.append(_pair(step.name, "verdict", win_xy, loser, answers))
    return pairs, drops


def _winner(verdicts: list[str] | None, first: str, second: str) -> str | None:
    """The row this order's verdicts prefer (majority over samples), or None for a tie."""
    if not verdicts:
        return None
    counts = Counter(verdicts).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    top = counts[0][0]
    return first if top == "A" else second if top == "B" else None


def revision_pairs(con, st, answers: dict) -> tuple[list[dict], list[dict]]:
    step = st.spec
    got = sorted(reads.rows(con, step.name, ["_id", "_parent_id", step.output]), key=lambda r: r["_id"])
    pairs, drops = [], []
    for r in got:
        rid, original, revision = r["_id"], r["_parent_id"], r[step.output]
        if original not in answers:
            continue
        if (revision or "").strip() == (answers[original]["text"] or "").strip():
            drops.append(_drop(rid, "the revision is the original unchanged: nothing to prefer"))
            continue
        pairs.append(_pair(step.name, "revision", rid, original, answers, chosen_text=revision))
    return pairs, drops


def _write(con, step: str, pairs: list[dict], drops: list[dict]) -> None:
    verdicts = [(p["_id"], Verdict(True, _kept_reason(p), p["margin"])) for p in pairs]
    verdicts += [(d["row_id"], Verdict(False, d["reason"], d["score"])) for d in drops]
    replace_pairs(con, step, pairs_stage(step), pairs, verdicts)


def _kept_reason(p: dict) -> str:
    if p["method"] == "score":
        return f"scores {p['chosen_score']:g} over {p['rejected_score']:g}"
    if p["method"] == "verdict":
        return "both orders prefer the chosen answer"
    return "the teacher's revision over the original"
