"""The curation runner: stored rows in, decisions and the `curated` set out.

Stages run filters -> decontaminate -> dedup -> select, each over the rows the previous one kept. The runner, not
the stages, counts and records: every row that reaches a stage gets one `decisions` row (kept or dropped, reason,
score, duplicate_of). Curation is recomputed from stored rows, never from new generations, so a re-run replaces the
previous run's decisions and selection in one transaction (only embeddings, an expensive cache, persist).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import duckdb

from curation.stages import NAMES, PREFIXES, dedup_stages, filter_stages, stage_names
from curation.text import as_text
from datagen.store.connection import arrow_table, quote_ident
from datagen.store.writes import transaction


@dataclass
class Recorder:
    """Decisions of one curation run, and the funnel they make."""

    rows: list[dict]
    decisions: list[dict] = field(default_factory=list)
    funnel: list[dict] = field(default_factory=list)
    # One transaction gives every row one current_timestamp; stamping stage k at start + k microseconds keeps
    # "ORDER BY min(created_at)" in stage order for anyone reading the funnel back.
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None))

    def record(self, stage: str, alive: list[int], verdicts: list[tuple], seconds: float) -> list[int]:
        """Record one verdict per alive row: (kept, reason, score[, index of the row it duplicates])."""
        assert len(verdicts) == len(alive), f"stage {stage} gave {len(verdicts)} verdicts for {len(alive)} rows"
        kept = []
        stamp = self.started + timedelta(microseconds=len(self.funnel))
        for i, verdict in zip(alive, verdicts):
            ok, reason, score = verdict[:3]
            dup = verdict[3] if len(verdict) > 3 else None
            self.decisions.append({
                "row_id": self.rows[i]["_id"], "stage": stage, "kept": bool(ok), "reason": reason,
                "score": None if score is None else float(score),
                "duplicate_of": None if dup is None else self.rows[dup]["_id"], "created_at": stamp,
            })
            if ok:
                kept.append(i)
        self.funnel.append({"stage": stage, "rows_in": len(alive), "rows_out": len(kept), "seconds": seconds})
        return kept


def run_curation(con: duckdb.DuckDBPyConnection, loaded, plan, log: Callable[[str], None] = print) -> list[dict]:
    """Run the spec's curation block over its stored input rows; returns the funnel (stage, rows_in, rows_out)."""
    cur = loaded.spec.curation
    seed = cur.seed if cur.seed is not None else loaded.spec.seed
    rows = read_rows(con, cur.input, ordered_by_creation=cur.input not in plan.source_columns)
    if not rows:
        log(f"curation: `{cur.input}` has no rows yet; run `datagen run` first")
    rec = Recorder(rows)
    alive = list(range(len(rows)))
    ctx = _Context(con, loaded, rows, log)
    for stage, spec in zip(filter_stages(cur), cur.filters):
        alive = _timed(rec, stage, alive, lambda a, s=spec: _filter(ctx, s, a))
    if cur.decontaminate is not None:
        alive = _timed(rec, "decontaminate", alive, lambda a: _decontaminate(ctx, cur.decontaminate, a))
    for stage, spec in zip(dedup_stages(cur), cur.dedup):
        alive = _timed(rec, stage, alive, lambda a, s=spec: _dedup(ctx, s, a, seed))
    if cur.select is not None:
        alive = _select(ctx, rec, cur.select, alive, seed)
    write_results(con, cur.input, rec.decisions, [rows[i]["_id"] for i in alive])
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

    def texts(self, column: str, idx: list[int]) -> list[str]:
        return [as_text(self.rows[i].get(column)) for i in idx]

    def vectors(self, column: str, model: str, idx: list[int]):
        from curation.embed import embed

        return embed(self.con, self.texts(column, idx), [self.rows[i]["_id"] for i in idx], model,
                     self.loaded.dir, self.log)


def _timed(rec: Recorder, stage: str, alive: list[int], fn) -> list[int]:
    start = time.monotonic()
    verdicts = fn(alive) if alive else []  # no rows left: load no tokenizer or model for nothing
    return rec.record(stage, alive, verdicts, time.monotonic() - start)


def _filter(ctx: _Context, spec, alive: list[int]) -> list[tuple]:
    from curation.filters import apply_filter

    return apply_filter(spec, [ctx.rows[i] for i in alive], ctx.loaded.dir)


def _decontaminate(ctx: _Context, spec, alive: list[int]) -> list[tuple]:
    from curation.decontaminate import benchmark_index, decontaminate

    column = spec.against_column or spec.column
    bench = ctx.con.execute(f"SELECT _id, {quote_ident(column)} FROM {quote_ident(spec.against)}").fetchall()
    index = benchmark_index(bench, spec.ngram)
    return decontaminate(ctx.texts(spec.column, alive), index, spec.ngram, spec.against)


def _dedup(ctx: _Context, spec, alive: list[int], seed: int) -> list[tuple]:
    from curation.dedup import priority_order

    sub = [ctx.rows[i] for i in alive]
    order = priority_order(sub, spec.keep_by, spec.keep)
    if spec.type == "exact":
        from curation.dedup.exact import exact_dedup

        result = exact_dedup(ctx.texts(spec.column, alive), order)
    elif spec.type == "minhash":
        from curation.dedup.minhash import minhash_dedup

        result = minhash_dedup(ctx.texts(spec.column, alive), order, spec.threshold, spec.ngram, spec.num_perm)
    else:
        from curation.dedup.semantic import semantic_dedup

        vectors = ctx.vectors(spec.column, spec.model, alive)
        result = semantic_dedup(vectors, order, spec.threshold, spec.exact_below, spec.nprobe, seed)
    # dedup gives positions within `alive`; the recorder wants row indices for duplicate_of
    return [(kept, _dup_reason(spec, score) if not kept else None, score, None if dup is None else alive[dup])
            for kept, dup, score in result]


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
        return ctx.vectors(column, model, [alive[k] for k in idx])

    sel = select(spec, sub, seed, embed)
    picked = {p: k for k, p in enumerate(sel.chosen)}
    verdicts = []
    for k in range(len(sub)):
        if k in picked:
            verdicts.append((True, f"selected #{picked[k] + 1}: {sel.notes.get(k, '')}".rstrip(": "),
                             float(sel.priority[k])))
        else:
            verdicts.append((False, f"not selected (n = {spec.n})", float(sel.priority[k])))
    rec.record("select", alive, verdicts, time.monotonic() - start)
    return [alive[p] for p in sel.chosen]


def _student(ctx: _Context, spec, alive: list[int]) -> list[tuple]:
    from curation.select.student import student_verdicts

    return student_verdicts(ctx.con, ctx.loaded, spec, [ctx.rows[i] for i in alive], ctx.log)


def read_rows(con: duckdb.DuckDBPyConnection, name: str, ordered_by_creation: bool) -> list[dict]:
    """The input's rows as dicts. A step's rows come in generation order; a source's in its own (file) order."""
    order = " ORDER BY _created_at, _sample_index, _id" if ordered_by_creation else ""
    return arrow_table(con.sql(f"SELECT * FROM {quote_ident(name)}{order}")).to_pylist()


def write_results(con: duckdb.DuckDBPyConnection, input_name: str, decisions: list[dict], selected: list[str]) -> None:
    """Replace the previous curation run's decisions and selection, and (re)create the `curated` view, atomically."""
    import pyarrow as pa

    schema = pa.schema([("row_id", pa.string()), ("stage", pa.string()), ("kept", pa.bool_()),
                        ("reason", pa.string()), ("score", pa.float64()), ("duplicate_of", pa.string()),
                        ("created_at", pa.timestamp("us"))])
    table = pa.Table.from_pylist(decisions, schema=schema)
    ranks = pa.table({"row_id": pa.array(selected, pa.string()), "rank": pa.array(range(len(selected)), pa.int32())})
    con.register("_decisions_batch", table)
    con.register("_curated_batch", ranks)
    try:
        with transaction(con):
            con.execute(f"DELETE FROM decisions WHERE {_curation_stage_sql()}")
            con.execute("INSERT INTO decisions (row_id, stage, kept, reason, score, duplicate_of, created_at) "
                        "SELECT row_id, stage, kept, reason, score, duplicate_of, created_at FROM _decisions_batch")
            con.execute("DELETE FROM _curated")
            con.execute("INSERT INTO _curated SELECT row_id, rank FROM _curated_batch")
            con.execute(f"CREATE OR REPLACE VIEW curated AS SELECT i.* FROM {quote_ident(input_name)} i "
                        "JOIN _curated c ON c.row_id = i._id ORDER BY c.rank")
    finally:
        con.unregister("_decisions_batch")
        con.unregister("_curated_batch")


def _curation_stage_sql() -> str:
    # constants, not user input: a generation step's decisions (stage = its name, e.g. `selected_tasks`) stay
    exact = ", ".join(f"'{n}'" for n in NAMES)
    return f"(stage IN ({exact}) OR " + " OR ".join(f"starts_with(stage, '{p}')" for p in PREFIXES) + ")"


def read_funnel(con: duckdb.DuckDBPyConnection, cur=None) -> list[dict]:
    """The funnel of the last curation run from `decisions`: the spec's stage order first, any others after."""
    got = con.execute(
        f"SELECT stage, count(*), count(*) FILTER (WHERE kept), min(created_at) FROM decisions "
        f"WHERE {_curation_stage_sql()} GROUP BY stage").fetchall()
    order = {name: i for i, name in enumerate(stage_names(cur))} if cur is not None else {}
    got.sort(key=lambda r: (order.get(r[0], len(order)), r[3]))
    return [{"stage": s, "rows_in": n, "rows_out": k} for s, n, k, _ in got]
