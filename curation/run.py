"""The curation runner: stored rows in, decisions and the `curated` set out.

Stages run filters -> decontaminate -> dedup -> select, each over the rows the previous one kept. The runner, not
the stages, counts and records: every row that reaches a stage gets one `Verdict`, stored as a `decisions` row (kept
or dropped, reason, score, duplicate_of). Curation is recomputed from stored rows, never from new generations, so a
re-run replaces the previous run's decisions and selection in one transaction (embeddings and the student's probe
answers, which are expensive, persist in the store and are reused).

People's decisions from `datagen review` (datagen/store/human.py) go first, as the stage `review:human`: a row a
person dropped goes there; a row a person kept survives every later stage (the stage's own verdict is recorded as
kept, its reason kept in the reason) and joins the selection. A person's newest edit of a reply replaces the reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Callable

import duckdb

from datagen.store import human, reads
from datagen.store.decisions import replace_curated
from datagen.text import as_text
from datagen.verdict import Verdict


@dataclass
class Recorder:
    """Verdicts of one curation run, and the funnel they make."""

    rows: list[dict]
    decisions: list[tuple[str, str, Verdict]] = field(default_factory=list)  # (stage, row_id, verdict)
    funnel: list[dict] = field(default_factory=list)
    kept_by: dict[str, str] = field(default_factory=dict)  # row_id -> the person who kept it in `datagen review`

    def record(self, stage: str, alive: list[int], verdicts: list[Verdict], seconds: float) -> list[int]:
        """Record one verdict per alive row; returns the rows kept."""
        if len(verdicts) != len(alive):
            raise AssertionError(f"stage {stage} gave {len(verdicts)} verdicts for {len(alive)} rows")
        kept = []
        for i, verdict in zip(alive, verdicts):
            verdict = self.rescued(self.rows[i]["_id"], verdict)
            self.decisions.append((stage, self.rows[i]["_id"], verdict))
            if verdict.kept:
                kept.append(i)
        self.funnel.append({"stage": stage, "rows_in": len(alive), "rows_out": len(kept), "seconds": seconds})
        return kept

    def rescued(self, row_id: str, verdict: Verdict) -> Verdict:
        """A row a person kept stays whatever a stage says; the stage's verdict stays readable in the reason."""
        who = self.kept_by.get(row_id)
        if verdict.kept or who is None:
            return verdict
        return Verdict(True, f"kept by {who} in review over: {verdict.reason}", verdict.score, verdict.duplicate_of)


def run_curation(con: duckdb.DuckDBPyConnection, loaded, plan, log: Callable[[str], None] = print,
                 generate_requests=None) -> list[dict]:
    """Run the spec's curation block over its stored input rows; returns the funnel (stage, rows_in, rows_out).
    `generate_requests` sends model requests through the run loop (curation/select/difficulty.py; datagen.api passes it)."""
    cur = loaded.spec.curation
    seed = cur.seed if cur.seed is not None else loaded.spec.seed
    # a step's rows in generation order; a source's in its own (file) order
    rows = reads.rows(con, cur.input, in_creation_order=cur.input not in plan.source_columns)
    if not rows:
        log(f"curation: `{cur.input}` has no rows yet; run `datagen run` first")
    # what people said in `datagen review`: their newest edit of a reply is the reply; their drops go first
    output = plan.step(cur.input).spec.output if cur.input not in plan.source_columns else None
    rows = human.with_revisions(con, rows, output)
    people = human.latest_decisions(con, [r["_id"] for r in rows])
    rec = Recorder(rows, kept_by={rid: who for rid, (kept, _, who) in people.items() if kept})
    alive = list(range(len(rows)))
    ctx = _Context(con, loaded, rows, log, generate_requests)
    if people:
        alive = _timed(rec, human.REVIEW_STAGE, alive, lambda a: _people(rows, people, a))
    for stage, spec in zip(cur.filter_stages(), cur.filters):
        alive = _timed(rec, stage, alive, lambda a, s=spec: _filter(ctx, s, a))
    if cur.decontaminate is not None:
        alive = _timed(rec, "decontaminate", alive, lambda a: _decontaminate(ctx, cur.decontaminate, a))
    for stage, spec in zip(cur.dedup_stages(), cur.dedup):
        alive = _timed(rec, stage, alive, lambda a, s=spec: _dedup(ctx, s, a, seed))
    if cur.select is not None:
        alive = _select(ctx, rec, cur.select, alive, seed)
    replace_curated(con, rec.decisions, [rows[i]["_id"] for i in alive])
    for f in rec.funnel:
        log(f"curation {f['stage']}: {f['rows_in']} in, {f['rows_out']} out ({f['seconds']:.1f} s)")
    log(f"curation: {len(alive)} of {len(rows)} rows in `curated`")
    return rec.funnel


@dataclass
class _Context:
    con: duckdb.DuckDBPyConnection
    loaded: object
    rows: list[dict]
    log: Callable[[str], None]
    generate_requests: Callable | None = None  # the run loop's generate_requests, bound by datagen.api

    def texts(self, column: str, idx: list[int]) -> list[str]:
        return [as_text(self.rows[i].get(column)) for i in idx]

    def vectors(self, column: str, model: str, idx: list[int], backend: str = "torch"):
        from datagen.embed.encode import embed

        return embed(self.con, self.texts(column, idx), [self.rows[i]["_id"] for i in idx], model,
                     self.loaded.dir, self.log, backend=backend)


def _timed(rec: Recorder, stage: str, alive: list[int], fn) -> list[int]:
    start = time.monotonic()
    verdicts = fn(alive) if alive else []  # no rows left: load no tokenizer or model for nothing
    return rec.record(stage, alive, verdicts, time.monotonic() - start)


def _people(rows: list[dict], people: dict, alive: list[int]) -> list[Verdict]:
    verdicts = []
    for i in alive:
        kept, reason, who = people.get(rows[i]["_id"], (True, None, None))
        verdicts.append(Verdict(kept, None if who is None else f"{'kept' if kept else 'dropped'} by {who}"
                                + (f": {reason}" if reason else "")))
    return verdicts


def _filter(ctx: _Context, spec, alive: list[int]) -> list[Verdict]:
    from curation.filters import apply_filter

    return apply_filter(spec, [ctx.rows[i] for i in alive], ctx.loaded.dir)


def _decontaminate(ctx: _Context, spec, alive: list[int]) -> list[Verdict]:
    from curation.decontaminate import benchmark_index, decontaminate

    column = spec.against_column or spec.column
    bench = [(r["_id"], r[column]) for r in reads.rows(ctx.con, spec.against, ["_id", column])]
    index = benchmark_index(bench, spec.ngram)
    return decontaminate(ctx.texts(spec.column, alive), index, spec.ngram, spec.against)


def _dedup(ctx: _Context, spec, alive: list[int], seed: int) -> list[Verdict]:
    from curation.dedup import apply_dedup, priority_order

    order = priority_order([ctx.rows[i] for i in alive], spec.keep_by, spec.keep)

    def vectors(pos: list[int], backend: str):
        return ctx.vectors(spec.column, spec.model, [alive[k] for k in pos], backend)

    result = apply_dedup(spec, ctx.texts(spec.column, alive), order, vectors, seed)
    # dedup gives positions within `alive`; a verdict names the kept row by its id
    return [Verdict(kept, _dup_reason(spec, score) if not kept else None, score,
                    None if dup is None else ctx.rows[alive[dup]]["_id"]) for kept, dup, score in result]


def _dup_reason(spec, score: float | None) -> str:
    if spec.type == "exact":
        return "same normalised text as an earlier kept row"
    what = "Jaccard" if spec.type == "minhash" else "cosine"
    return f"near-duplicate: {what} {score:.3f} >= {spec.threshold:g}"


def _select(ctx: _Context, rec: Recorder, spec, alive: list[int], seed: int) -> list[int]:
    from curation.select import select

    if spec.difficulty is not None and spec.difficulty.by == "student":
        alive = _timed(rec, "select:difficulty", alive, lambda a: _student(ctx, spec.difficulty, a))
    start = time.monotonic()
    if not alive:
        rec.record("select", [], [], 0.0)
        return []
    sub = [ctx.rows[i] for i in alive]

    def embed(column: str, model: str, idx: list[int]):
        backend = spec.diversity.backend if spec.diversity is not None else "torch"
        return ctx.vectors(column, model, [alive[k] for k in idx], backend)

    sel = select(spec, sub, seed, embed)
    picked = {p: k for k, p in enumerate(sel.chosen)}
    verdicts = []
    for k in range(len(sub)):
        if k in picked:
            verdicts.append(Verdict(True, f"selected #{picked[k] + 1}: {sel.notes.get(k, '')}".rstrip(": "),
                                    float(sel.priority[k])))
        else:
            verdicts.append(Verdict(False, f"not selected (n = {spec.n})", float(sel.priority[k])))
    kept = rec.record("select", alive, verdicts, time.monotonic() - start)
    chosen = [alive[p] for p in sel.chosen]
    return chosen + sorted(set(kept) - set(chosen))  # rows a person kept join the selection, after it


def _student(ctx: _Context, spec, alive: list[int]) -> list[Verdict]:
    from curation.select.difficulty import student_verdicts

    return student_verdicts(ctx.con, ctx.loaded, spec, [ctx.rows[i] for i in alive], ctx.log, ctx.generate_requests)

