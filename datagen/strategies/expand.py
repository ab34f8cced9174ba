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

from typing import Callable

import duckdb

from datagen.errors import UserError
from datagen.keys import request_key
from datagen.spec.models import ExpandStep
from datagen.spec.plan import Plan, PlannedStep
from datagen.templates import TemplateFailed
from datagen.store.connection import quote_ident
from datagen.store.views import current_outputs, output_columns
from datagen.store.writes import insert_pending
from datagen.strategies import label
from datagen.strategies.decisions import Verdict, write_decisions
from datagen.strategies.novelty import NoveltyIndex


def view_sql(st: PlannedStep) -> str:
    """The accepted candidates of the current spec's rounds."""
    return (f"SELECT {', '.join(output_columns(st))} FROM outputs o WHERE {current_outputs(st)} "
            f"AND o._id IN (SELECT row_id FROM decisions WHERE stage = '{st.name}' AND kept)")


def build_round(step: ExpandStep, round_no: int, count: int, first_index: int, pool: list[dict], seed: int,
                teacher_name: str, identity: dict, sampling: dict) -> list[label.PlannedRequest]:
    """The requests of one round; request i draws its demos with (seed, step, round, i), so a replay draws the same."""
    out = []
    for i in range(count):
        demo_rows = label.draw_demos(step.demos, pool, f"round {round_no} request {i}", seed, step.name)
        messages = render(step, demo_rows)
        ordinal = first_index + i  # the candidate's number in the step: its `_sample_index`
        key = request_key(step=step.name, parent_id=None, messages=messages, teacher=identity, sampling=sampling,
                          json_schema=None, logprobs=step.logprobs, sample_index=ordinal,
                          extra={"round": round_no, "index": i})
        out.append(label.PlannedRequest(key, step.name, None, ordinal, messages, teacher_name,
                                        [(d["_id"], "demo") for d in demo_rows]))
    return out


def render(step: ExpandStep, demo_rows: list[dict]) -> list[dict[str, str]]:
    try:
        return label.render_messages(step, {}, demo_rows)
    except TemplateFailed as exc:
        # plan time cannot see which attributes of a demo a template reads; a generated demo has only `output`
        raise UserError(f"step {step.name}: the prompt failed on a demo row: {exc}. With include_generated, "
                        f"a new item shown as a demo has only the `{step.output}` column") from None


def run_step(con: duckdb.DuckDBPyConnection, plan: Plan, st: PlannedStep, teachers: dict, progress, log):
    from datagen import run as runloop

    step: ExpandStep = st.spec
    teacher_name = st.teachers[0]
    sampling, identity = runloop.teacher_setup(plan, teacher_name, step)
    pool = runloop.fetch_rows(con, step.demos.from_)
    index = existing_items(con, plan, step, pool, log)
    summary = runloop.StepSummary(step.name)
    accepted: list[dict] = []  # accepted items as demo rows: `_id` and the output column
    keys: list[str] = []
    for round_no in range(step.max_rounds):
        missing = step.target - len(accepted)
        if missing <= 0:
            break
        demo_pool = pool + accepted if step.demos.include_generated else pool
        reqs = build_round(step, round_no, min(missing, step.batch), summary.planned, demo_pool, plan.spec.seed,
                           teacher_name, identity, sampling)
        keys += [r.key for r in reqs]
        insert_pending(con, step.name, reqs, keys)
        finished = finished_keys(con, [r.key for r in reqs])
        todo = [r for r in reqs if r.key not in finished]
        summary.planned += len(reqs)
        summary.cached += len(reqs) - len(todo)
        runloop.generate(con, plan, st, teacher_name, todo, teachers, summary, None, log)
        new = judge_round(con, step, index, reqs)
        accepted += [{"_id": rid, step.output: text} for rid, text in new]
        if progress:
            progress(step.name, len(accepted), step.target)
        log(f"{step.name}: round {round_no + 1}: {len(reqs)} requested ({len(todo)} sent), {len(new)} accepted, "
            f"{len(accepted)} of {step.target}")
    if len(accepted) < step.target:
        log(f"{step.name}: stopped after max_rounds ({step.max_rounds}) with {len(accepted)} of {step.target} items; "
            f"see the rejections: select reason, count(*) from decisions where stage = '{step.name}' group by 1")
    if summary.generated or summary.failed:
        runloop.check_budget(step, summary, final=True)
    return summary


def existing_items(con, plan: Plan, step: ExpandStep, pool: list[dict], log: Callable[[str], None]) -> NoveltyIndex:
    """The novelty index over the demo source: the items every candidate must differ from."""
    nov = step.novelty
    column = (nov.column if nov and nov.column else None) or step.output
    embed = None
    if nov is not None and nov.max_cosine is not None:
        from curation.embed import embed as embed_texts

        def embed(texts: list[str], ids: list[str]):
            return embed_texts(con, texts, ids, nov.model, plan.loaded.dir, log)

    index = NoveltyIndex(nov.max_rouge_l if nov else None, nov.max_cosine if nov else None, embed)
    rows = [r for r in pool if r.get(column) is not None]
    index.add_many([r["_id"] for r in rows], [str(r[column]).strip() for r in rows])
    return index


def finished_keys(con, keys: list[str]) -> set[str]:
    rows = con.execute("SELECT key FROM requests WHERE key IN (SELECT unnest(?)) AND status IN ('done', 'failed')",
                       [keys]).fetchall()
    return {k for (k,) in rows}


def judge_round(con, step: ExpandStep, index: NoveltyIndex, reqs: list) -> list[tuple[str, str]]:
    """Judge the round's replies in request order, record every verdict, and return the accepted (id, text)."""
    order = {r.key: i for i, r in enumerate(reqs)}
    got = con.execute("SELECT key, _id, text, _finish_reason FROM outputs WHERE key IN (SELECT unnest(?))",
                      [list(order)]).fetchall()
    got.sort(key=lambda g: order[g[0]])
    texts = [(t or "").strip() for _, _, t, _ in got]
    vectors = None
    if index.embed is not None:
        live = [i for i, t in enumerate(texts) if t]
        if live:
            block = index.embed([texts[i] for i in live], [got[i][1] for i in live])
            vectors = dict(zip(live, block))
    verdicts: list[tuple[str, Verdict]] = []
    new: list[tuple[str, str]] = []
    for i, (_, rid, _, finish) in enumerate(got):
        if finish == "length":
            verdict = Verdict(False, "truncated: the reply hit max_tokens")
        else:
            verdict = index.check(texts[i], vectors.get(i) if vectors else None)
        verdicts.append((rid, verdict))
        if verdict.kept:
            index.add_many([rid], [texts[i]], vectors[i][None, :] if vectors and i in vectors else None)
            new.append((rid, texts[i]))
    write_decisions(con, step.name, verdicts)
    return new


def status_lines(con, step: ExpandStep) -> list[str]:
    """For `datagen status`: accepted against target, and the commonest rejection reasons."""
    name = quote_ident(step.name)
    accepted = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    reasons = con.execute(
        f"SELECT regexp_replace(reason, ' [0-9.]+ >=', ' >='), count(*) AS n FROM decisions "
        f"WHERE stage = ? AND NOT kept AND row_id IN (SELECT _id FROM outputs o WHERE o.step = ? AND o.key IN "
        f"(SELECT key FROM _plan WHERE step = ?)) GROUP BY 1 ORDER BY n DESC", [step.name] * 3).fetchall()
    lines = [f"  accepted {accepted} of target {step.target}; rejected {sum(n for _, n in reasons)}"]
    lines += [f"    {n} x {reason}" for reason, n in reasons]
    return lines
