"""Self-knowledge: the student answers each input `n` times and its own answers are filtered, (x, y ~ pS, filter(y)).

The requests are a labeling step's (the step's `teacher` is the student). Each reply's final answer is extracted
(`extract`, else GSM8K's `#### x`, the last `\\boxed{}`, the last number) into `<output>_answer`. Once the step's
samples are in, every sample gets a `decisions` row (stage `self:<step>`):
- `keep: majority` (self-consistency): kept when its answer agrees with the most common answer among the input's
  samples (answers compared as mathematics by math-verify); dropped with the reason otherwise, and all of an input's
  samples are dropped when the top answers tie.
- `keep: verified`: kept when its answer equals the input's `reference` answer.
The step's view shows the kept samples only.
"""

from __future__ import annotations

from collections import defaultdict

from datagen.spec.plan_feedback import self_stage
from datagen.store.connection import quote_ident as q
from datagen.store.writes import transaction


def parse_reply(step, text: str) -> tuple[dict, None]:
    """A student reply is always a row; an answer that cannot be extracted is dropped later, with that reason."""
    from curation.filters.verify_math import extract_answer

    return {f"{step.output}_answer": extract_answer(text or "", step.extract)}, None


def decide(con, st) -> tuple[int, int]:
    """Record kept/dropped for every current sample of the step; returns (kept, dropped)."""
    step = st.spec
    ref = f", p.{q(step.reference)}" if step.keep == "verified" else ", NULL"
    got = con.execute(
        f"SELECT o._id, o._parent_id, json_extract_string(o.fields, '$.\"{step.output}_answer\"'){ref} "
        f"FROM outputs o JOIN {q(st.input)} p ON p._id = o._parent_id "
        f"WHERE o.step = ? AND o.key IN (SELECT key FROM _plan WHERE step = ?) ORDER BY o._parent_id, o._sample_index",
        [step.name, step.name]).fetchall()
    if step.keep == "majority":
        verdicts = majority([(rid, parent, answer) for rid, parent, answer, _ in got])
    else:
        verdicts = verified([(rid, answer, reference) for rid, _, answer, reference in got])
    _write(con, self_stage(step.name), verdicts)
    kept = sum(1 for v in verdicts if v["kept"])
    return kept, len(verdicts) - kept


def majority(samples: list[tuple[str, str, str | None]]) -> list[dict]:
    from curation.filters.verify_math import same_answer

    by_input: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for rid, parent, answer in samples:
        by_input[parent].append((rid, answer))
    out = []
    for group in by_input.values():
        clusters: list[list] = []  # [representative answer, [row ids]]
        for rid, answer in group:
            if answer is None:
                continue
            home = next((c for c in clusters if same_answer(c[0], answer)), None)
            if home is None:
                clusters.append([answer, [rid]])
            else:
                home[1].append(rid)
        clusters.sort(key=lambda c: -len(c[1]))
        tied = len(clusters) > 1 and len(clusters[0][1]) == len(clusters[1][1])
        top = clusters[0] if clusters and not tied else None
        for rid, answer in group:
            out.append(_majority_verdict(rid, answer, top, clusters, len(group), tied))
    return out


def _majority_verdict(rid, answer, top, clusters, n, tied) -> dict:
    if answer is None:
        return _verdict(rid, False, "no final answer found", 0.0)
    if tied:
        tops = ", ".join(f"{c[0][:20]} ({len(c[1])})" for c in clusters if len(c[1]) == len(clusters[0][1]))
        return _verdict(rid, False, f"no majority: answers {tops} tie", 0.0)
    share = len(top[1]) / n
    if rid in top[1]:
        return _verdict(rid, True, f"answer {answer[:40]} agrees with the majority ({len(top[1])} of {n})", share)
    return _verdict(rid, False, f"answer {answer[:40]} disagrees with the majority answer {top[0][:40]} "
                                f"({len(top[1])} of {n})", share)


def verified(samples: list[tuple[str, str | None, object]]) -> list[dict]:
    from curation.filters.verify_math import extract_answer, same_answer

    out = []
    for rid, answer, reference in samples:
        ref = extract_answer(str(reference)) if reference is not None else None
        if ref is None:
            out.append(_verdict(rid, False, "no final answer in the reference", None))
        elif answer is None:
            out.append(_verdict(rid, False, "no final answer found", 0.0))
        elif same_answer(ref, answer):
            out.append(_verdict(rid, True, f"answer {answer[:40]} = reference", 1.0))
        else:
            out.append(_verdict(rid, False, f"answer {answer[:40]} != reference {ref[:40]}", 0.0))
    return out


def _verdict(rid: str, kept: bool, reason: str, score: float | None) -> dict:
    return {"row_id": rid, "kept": kept, "reason": reason, "score": score}


def _write(con, stage: str, verdicts: list[dict]) -> None:
    import pyarrow as pa

    rows = [{**v, "stage": stage} for v in verdicts]
    with transaction(con):
        con.execute("DELETE FROM decisions WHERE stage = ?", [stage])
        if rows:
            con.register("_self_batch", pa.Table.from_pylist(rows))
            con.execute("INSERT INTO decisions BY NAME SELECT * FROM _self_batch")
            con.unregister("_self_batch")
