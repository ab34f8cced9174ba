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

from datagen.spec.models import SelfStep
from datagen.spec.plan import PlannedStep, check_clash, step_view
from datagen.store import reads
from datagen.store.decisions import derived_counts, replace_decisions, step_owner
from datagen.strategies import label
from datagen.strategies.base import Job, StepEstimate, Volume
from datagen.verdict import Verdict

STEP = SelfStep
# the student answers the input rows as a labeling step would, and what it reads and renders is a label step's
rounds = label.rounds
reads_from = label.reads_from
template_texts = label.template_texts
coverage_columns = label.coverage_columns
row_prompt = label.row_prompt


def volume(step: SelfStep, teachers: int, volume_of) -> Volume | None:
    """At most all `n` samples of every input are kept."""
    up = volume_of(step.input)
    return Volume(up.rows, step.n) if up is not None else None


def estimate(job: Job, volume_of) -> StepEstimate:
    return StepEstimate(volume_of(job.step.input).rows * job.step.n, label.known_prompts(job))


def stage(step_name: str) -> str:
    return f"self:{step_name}"


def plan(loaded, plan, shape, i: int, step: SelfStep) -> PlannedStep:
    loc = ("steps", i)
    planned = label.plan_rows(loaded, shape, i, step)
    answer = f"{step.output}_answer"
    check_clash(loaded, loc, {answer: "VARCHAR"}, planned.input_columns, step.input)
    planned.produced[answer] = "VARCHAR"
    if step.reference is not None and step.reference not in planned.input_columns:
        cols = ", ".join(c for c in planned.input_columns if not c.startswith("_"))
        raise loaded.error(loc + ("reference",), f"`{step.reference}` is not a column of `{step.input}`; "
                                                 f"columns: {cols}")
    # the view shows the kept samples; the dropped ones are in `decisions` with their reason
    planned.view = step_view(step, step.input, planned.input_columns, planned.produced, decisions=stage(step.name),
                             kept_only=True)
    return planned


def plan_line(st: PlannedStep) -> str:
    return st.input


def json_schema(step) -> None:
    return None


def parse(step, text: str, req, sample=None) -> tuple[dict, None]:
    """A student reply is always a row; an answer that cannot be extracted is dropped later, with that reason. With
    `reasoning`, `text` is the answer alone, so a number in the trace is never taken for the answer."""
    from datagen.answers import extract_answer

    fields, _ = label.parse(step, text, req, sample)
    return {**fields, f"{step.output}_answer": extract_answer(text or "", step.extract)}, None


def finish(job: Job) -> None:
    kept, dropped = decide(job.con, job.st)
    job.log(f"step {job.st.name}: kept {kept} samples, dropped {dropped} (keep: {job.step.keep}; see decisions)")


def status_lines(con, st: PlannedStep) -> list[str]:
    return [f"    {stage}: {kept} samples kept, {dropped} dropped (reasons in `decisions`)"
            for stage, kept, dropped in derived_counts(con, st.name)]


def card_notes(step) -> list[str]:
    return label.input_notes(step) + [f"keep: {step.keep}" + (f" against `{step.reference}`" if step.reference else "")] \
        + label.reasoning_notes(step)


def decide(con, st) -> tuple[int, int]:
    """Record kept/dropped for every current sample of the step; returns (kept, dropped)."""
    step = st.spec
    answer = f"{step.output}_answer"
    cols = ["_id", "_parent_id", answer] + ([step.reference] if step.keep == "verified" else [])
    got = reads.all_step_rows(con, st.view, cols)
    if step.keep == "majority":
        verdicts = majority([(r["_id"], r["_parent_id"], r[answer]) for r in got])
    else:
        verdicts = verified([(r["_id"], r[answer], r[step.reference]) for r in got])
    replace_decisions(con, step_owner(step.name), [(stage(step.name), rid, v) for rid, v in verdicts])
    kept = sum(1 for _, v in verdicts if v.kept)
    return kept, len(verdicts) - kept


def majority(samples: list[tuple[str, str, str | None]]) -> list[tuple[str, Verdict]]:
    from datagen.answers import same_answer

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


def verified(samples: list[tuple[str, str | None, object]]) -> list[tuple[str, Verdict]]:
    from datagen.answers import extract_answer, same_answer

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


def _verdict(rid: str, kept: bool, reason: str, score: float | None) -> tuple[str, Verdict]:
    return rid, Verdict(kept, reason, score)
