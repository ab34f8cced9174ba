"""Expansion (self-instruct): the teacher invents new inputs in the style of a few demonstrations, x ~ pT(x | I + c).

Requests go out in rounds. Round r asks for the number of items still missing (at most `batch`); request i of round r
shows `k` demos drawn with the run's seed from the demo source (and, with `include_generated`, from the items accepted
in earlier rounds). Each candidate is then judged in order against every existing item (novelty.py); every verdict is
a `decisions` row (stage: the step's name), and the step's view holds the accepted candidates. Rounds stop when
`target` items are accepted or after `max_rounds`.

Resume: a request's key hashes its round, its index and its rendered prompt, and a round's prompts depend only on the
seed and on what earlier rounds accepted, which is recomputed from the stored replies. So a re-run replays finished
rounds from the store without sending anything, sends only the requests of the interrupted round that have no reply,
and then goes on. A failed request is final for its round (retrying it could change what the round accepted and so
every later round's prompts); later rounds ask for what it did not bring.
"""

from __future__ import annotations

from collections.abc import Callable

from datagen.errors import UserError
from datagen.keys import logprobs_key, request_key
from datagen.spec.models import ExpandStep
from datagen.spec.plan import (Plan, PlannedStep, check_template, columns_of, produced_columns, step_teachers,
                               step_view)
from datagen.store import reads
from datagen.store.decisions import drop_reasons, replace_decisions, step_owner
from datagen.strategies import label
from datagen.strategies.base import Job, PlannedRequest, Round, StepEstimate, Volume
from datagen.strategies.novelty import NoveltyIndex
from datagen.templates import TemplateFailed
from datagen.verdict import Verdict

STEP = ExpandStep


def reads_from(step: ExpandStep) -> list[tuple[str, tuple]]:
    return [(step.demos.from_, ("demos", "from"))]


def volume(step: ExpandStep, teachers: int, volume_of) -> Volume:
    """The view holds at most `target` accepted items."""
    return Volume(step.target)


def template_texts(step: ExpandStep) -> list[str]:
    return [t for t in (step.system, step.prompt) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step) -> None:
    return None  # it makes its own inputs


def plan(loaded, plan, shape, i: int, step: ExpandStep) -> PlannedStep:
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    if step.n != 1:
        raise loaded.error(loc + ("n",), "an expand step sends `batch` requests per round, each with its own demos; "
                                         "remove `n` (or set it to 1)")
    demos = step.demos
    if demos.as_ == "turns":
        raise loaded.error(loc + ("demos", "as"), "an expand step shows its demos inside the prompt: remove "
                                                  "`as: turns` and loop over `demos` in the prompt template")
    demo_cols = columns_of(shape, demos.from_)
    shown = ", ".join(c for c in demo_cols if not c.startswith("_"))
    if demos.include_generated and step.output not in demo_cols:
        raise loaded.error(loc + ("output",), f"with include_generated, new items are shown as demos beside the rows "
                                              f"of `{demos.from_}`, so `output` must be one of its columns: {shown}")
    if step.novelty is not None:
        nov = step.novelty
        column = nov.column or step.output
        if column not in demo_cols:
            key = "column" if nov.column else None
            raise loaded.error(loc + ("novelty",) + ((key,) if key else ()),
                               f"novelty compares new items with `{demos.from_}`'s `{column}` column, which it does "
                               f"not have; set novelty.column to one of: {shown}")
        if nov.max_rouge_l is None and nov.max_cosine is None:
            raise loaded.error(loc + ("novelty",), "novelty needs max_rouge_l (e.g. 0.7) and/or max_cosine "
                                                   "(e.g. 0.9)")
        if nov.max_cosine is not None:
            from datagen.bundled import model_identity

            try:
                model_identity(nov.model, loaded.dir)
            except UserError as exc:
                raise loaded.error(loc + ("novelty", "model"), str(exc)) from None
    context = {"demos"}
    check_template(loaded, loc + ("prompt",), step.prompt, context, step.name)
    if step.system:
        check_template(loaded, loc + ("system",), step.system, context, step.name)
    produced = produced_columns(loaded, loc, step.output, None)
    # the view holds the accepted candidates of the current spec's rounds
    view = step_view(step, None, [], produced, decisions=step.name, kept_only=True)
    return PlannedStep(step, i, None, [], produced, names, view)


def plan_line(st: PlannedStep) -> str:
    s = st.spec
    return f"from {s.demos.from_} (target {s.target}, at most {s.max_rounds} rounds)"


def estimate(job: Job, volume_of) -> StepEstimate:
    """At worst every round asks for a full batch and accepts nothing until the last; the first round's prompts
    stand for every round's (later ones differ only in which demos they draw)."""
    step: ExpandStep = job.step
    per_round = min(step.batch, step.target)
    pool = reads.rows(job.con, step.demos.from_)
    prompts = [r.messages for r in build_round(step, 0, per_round, 0, pool, job.seed, "", {}, {})] if pool else []
    return StepEstimate(step.max_rounds * per_round, prompts)


def build_round(step: ExpandStep, round_no: int, count: int, first_index: int, pool: list[dict], seed: int,
                teacher_name: str, identity: dict, sampling: dict) -> list[PlannedRequest]:
    """The requests of one round; request i draws its demos with (seed, step, round, i), so a replay draws the same."""
    out = []
    for i in range(count):
        demo_rows = label.draw_demos(step.demos, pool, f"round {round_no} request {i}", seed, step.name)
        messages = render(step, demo_rows)
        ordinal = first_index + i  # the candidate's number in the step: its `_sample_index`
        key = request_key(step=step.name, parent_id=None, messages=messages, teacher=identity, sampling=sampling,
                          json_schema=None, logprobs=logprobs_key(step), sample_index=ordinal,
                          extra={"round": round_no, "index": i})
        out.append(PlannedRequest(key, step.name, None, ordinal, messages, teacher_name,
                                        [(d["_id"], "demo") for d in demo_rows]))
    return out


def render(step: ExpandStep, demo_rows: list[dict]) -> list[dict[str, str]]:
    try:
        return label.render_messages(step, {}, demo_rows)
    except TemplateFailed as exc:
        # plan time cannot see which attributes of a demo a template reads; a generated demo has only `output`
        raise UserError(f"step {step.name}: the prompt failed on a demo row: {exc}. With include_generated, "
                        f"a new item shown as a demo has only the `{step.output}` column") from None


def rounds(job: Job):
    step: ExpandStep = job.step
    t = job.teachers[0]
    pool = reads.rows(job.con, step.demos.from_)
    index = existing_items(job.con, job.plan, step, pool, job.log)
    accepted: list[dict] = []  # accepted items as demo rows: `_id` and the output column
    verdicts: list[tuple[str, Verdict]] = []
    planned = 0
    for round_no in range(step.max_rounds):
        missing = step.target - len(accepted)
        if missing <= 0:
            break
        demo_pool = pool + accepted if step.demos.include_generated else pool
        reqs = build_round(step, round_no, min(missing, step.batch), planned, demo_pool, job.seed, t.name,
                           t.identity, t.sampling)
        planned += len(reqs)
        yield Round(reqs, retry_failed=False)
        judged = judge_round(job.con, index, reqs)
        verdicts += judged
        # every verdict so far, so the view holds what is accepted while later rounds run
        replace_decisions(job.con, step_owner(step.name), [(step.name, rid, v) for rid, v, _ in verdicts])
        new = [(rid, text) for rid, v, text in judged if v.kept]
        accepted += [{"_id": rid, step.output: text} for rid, text in new]
        job.log(f"{step.name}: round {round_no + 1}: {len(reqs)} requested, {len(new)} accepted, "
                f"{len(accepted)} of {step.target}")
    if len(accepted) < step.target:
        job.log(f"{step.name}: stopped after max_rounds ({step.max_rounds}) with {len(accepted)} of {step.target} "
                f"items; see the rejections: select reason, count(*) from decisions where stage = '{step.name}' "
                "group by 1")


def json_schema(step) -> None:
    return None


def parse(step, text: str, req, sample=None) -> tuple[dict, None]:
    return {}, None


def finish(job: Job) -> None:
    pass  # the rounds judged and recorded every candidate as they went


def card_notes(step: ExpandStep) -> list[str]:
    nov = step.novelty
    checks = [f"ROUGE-L < {nov.max_rouge_l}" if nov and nov.max_rouge_l else "",
              f"cosine < {nov.max_cosine}" if nov and nov.max_cosine else ""]
    kept = " and ".join(c for c in checks if c) or "not an exact duplicate"
    return label.input_notes(step) + [f"self-instruct expansion to {step.target} new items (kept when {kept})"]


def existing_items(con, plan: Plan, step: ExpandStep, pool: list[dict], log: Callable[[str], None]) -> NoveltyIndex:
    """The novelty index over the demo source: the items every candidate must differ from."""
    nov = step.novelty
    column = (nov.column if nov and nov.column else None) or step.output
    embed = None
    if nov is not None and nov.max_cosine is not None:
        from datagen.embed.encode import embed as embed_texts

        def embed(texts: list[str], ids: list[str]):
            return embed_texts(con, texts, ids, nov.model, plan.loaded.dir, log)

    index = NoveltyIndex(nov.max_rouge_l if nov else None, nov.max_cosine if nov else None, embed)
    rows = [r for r in pool if r.get(column) is not None]
    index.add_many([r["_id"] for r in rows], [str(r[column]).strip() for r in rows])
    return index


def judge_round(con, index: NoveltyIndex, reqs: list) -> list[tuple[str, Verdict, str]]:
    """Judge the round's replies in request order: (row id, verdict, text) each."""
    replies = reads.outputs_of(con, [r.key for r in reqs])
    got = [(r.key, replies[r.key]["_id"], replies[r.key]["text"], replies[r.key]["finish_reason"])
           for r in reqs if r.key in replies]
    texts = [(t or "").strip() for _, _, t, _ in got]
    vectors = None
    if index.embed is not None:
        live = [i for i, t in enumerate(texts) if t]
        if live:
            block = index.embed([texts[i] for i in live], [got[i][1] for i in live])
            vectors = dict(zip(live, block))
    out: list[tuple[str, Verdict, str]] = []
    for i, (_, rid, _, finish) in enumerate(got):
        if finish == "length":
            verdict = Verdict(False, "truncated: the reply hit max_tokens")
        else:
            verdict = index.check(texts[i], vectors.get(i) if vectors else None)
        out.append((rid, verdict, texts[i]))
        if verdict.kept:
            index.add_many([rid], [texts[i]], vectors[i][None, :] if vectors and i in vectors else None)
    return out


def status_lines(con, st: PlannedStep) -> list[str]:
    """For `datagen status`: accepted against target, and the commonest rejection reasons."""
    step = st.spec
    accepted = reads.count(con, step.name)
    if accepted is None:  # the step's view is not there yet (the spec changed since the last run)
        return []
    reasons = drop_reasons(con, step.name, row_ids_of_step=step.name)
    lines = [f"  accepted {accepted} of target {step.target}; rejected {sum(n for _, n in reasons)}"]
    lines += [f"    {n} x {reason}" for reason, n in reasons]
    return lines
