"""`datagen report`: one self-contained HTML page about a spec's store, to look at the data before trusting it.

Sections: Funnel, Lengths, Judge scores, Meta coverage, Embedding map, Teachers. Plots are inline SVG drawn here
(datagen/publish/svg.py), numbers that matter are tables, and a section without data says why. No script, stylesheet or
font is fetched, so the file opens offline and can be mailed around.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, UTC
from html import escape
from pathlib import Path

from datagen.version import __version__
from datagen.publish import svg
from datagen.publish.card import public_model
from datagen.pipeline.cost import usd
from datagen.spec.load import LoadedSpec
from datagen.spec.plan import Plan
from datagen.store import stats
from datagen.store.connection import open_store

SECTIONS = ["Funnel", "Lengths", "Judge scores", "Meta coverage", "Embedding map", "Teachers"]
MAX_POINTS = 3000  # the embedding map samples this many rows at most, so the page stays light
GROUP_COLOURS = {"selected": "#2e7d32", "dropped": "#d32f2f", "not selected": "#9e9e9e", "rows": "#4c78a8"}

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #222; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
nav a { margin-right: 14px; } .meta, .note { color: #666; } .note { font-style: italic; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; } th { background: #f4f4f4; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.heat td { min-width: 44px; text-align: center; } table.heat td.empty { color: #bbb; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; } figure { margin: 0; } figcaption { font-size: 13px; }
"""


def default_path(loaded: LoadedSpec) -> Path:
    from datagen.publish.export import export_dir

    folder = export_dir(loaded) if loaded.spec.export else loaded.store_path.parent
    return folder / f"{loaded.spec.name}-report.html"


def write_report(loaded: LoadedSpec, out: str | Path | None = None, plan: Plan | None = None) -> Path:
    from datagen.pipeline.planner import build_plan

    plan = plan or build_plan(loaded)
    path = Path(out).expanduser().resolve() if out else default_path(loaded)
    con = open_store(loaded.store_path, read_only=True)
    try:
        page = build_html(plan, con)
    finally:
        con.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def build_html(plan: Plan, con) -> str:
    spec = plan.spec
    bodies = [funnel(plan, con), lengths(plan, con), judge_scores(plan, con), meta_coverage(plan, con),
              embedding_map(con), teachers(plan, con)]
    nav = "".join(f'<a href="#{_anchor(t)}">{t}</a>' for t in SECTIONS)
    sections = "".join(f'<section id="{_anchor(t)}"><h2>{t}</h2>{b}</section>' for t, b in zip(SECTIONS, bodies))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(spec.name)}: datagen report'
            f'</title><meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{escape(spec.name)}</h1><p class="meta">{escape(spec.description or "")}</p>'
            f'<p class="meta">store {escape(plan.loaded.store_path.name)}; written {when} by datagen '
            f'{escape(__version__)}</p><nav>{nav}</nav>{sections}</body></html>')


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f'<td class="n">{v:,.1f}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="n">{v:,}</td>'
        return f"<td>{escape('' if v is None else str(v))}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{escape(caption)}</figcaption></figure>" if chart else ""


# --- sections --------------------------------------------------------------------------------------------------


def funnel(plan: Plan, con) -> str:
    counts = stats.step_counts(con, [(st.name, st.spec.strategy, st.input) for st in plan.steps])
    stages = stats.funnel(con, plan.stage_order)
    bars = [(f"{c['step']} rows", c["rows"]) for c in counts]
    bars += [(f"after {s.name}", s.kept) for s in stages]
    selected = stats.curated_ids(con)
    if stages and selected is not None and stages[-1].name != "select":  # else its last bar already says so
        bars.append(("selected", len(selected)))
    out = [svg.hbars(bars),
           _table(["step", "strategy", "input", "requests", "done", "failed", "rows"],
                  [[c["step"], c["strategy"], c["input"], c["requests"], c["done"], c["failed"], c["rows"]]
                   for c in counts])]
    from datagen.strategies import strategy_of

    for st in plan.steps:  # what `datagen status` says under each step (turns, tool calls and errors, votes...)
        out += [_note(f"{st.name}: {line.strip()}") for line in strategy_of(st.spec).status_lines(con, st)]
    if stages:
        out.append(_table(["curation stage", "rows in", "kept", "dropped", "commonest reasons for dropping"],
                          [[s.name, s.rows_in, s.kept, s.dropped, "; ".join(f"{r} ({n})" for r, n in s.reasons)]
                           for s in stages]))
        out.append(_note("Selection: " + stats.selection_method(plan)))
    elif plan.spec.curation is None:
        out.append(_note("No curation stages: this spec has no curation block."))
    else:
        out.append(_note("No curation decisions in the store yet: the curation block has not run."))
    return "".join(out)


def _output_rows(con, step) -> list[tuple]:
    """(output text, completion tokens, finish reason) for every row of a step."""
    return stats.output_lengths(con, step.name, step.spec.output)


def lengths(plan: Plan, con) -> str:
    charts, rows = [], []
    for st in plan.steps:
        data = _output_rows(con, st)
        if not data:
            rows.append([st.name, 0, None, None, None, None, None, 0])
            continue
        chars = [len(t or "") for t, _, _ in data]
        tokens = sorted(n for _, n, _ in data if n is not None)
        use_tokens = len(tokens) == len(data)
        values = tokens if use_tokens else sorted(chars)
        unit = "completion tokens" if use_tokens else "characters"
        few = use_tokens and values[-1] - values[0] <= 30  # a bar per token count when the range is narrow
        charts.append(_figure(svg.histogram(values, unit, integer_bins=few),
                              f"{st.name}: {st.spec.output} length in {unit}"))
        truncated = sum(1 for _, _, f in data if f == "length")
        rows.append([st.name, len(data), values[0], _quantile(values, 0.5), _quantile(values, 0.9), values[-1],
                     sum(chars) / len(chars), truncated])
    table = _table(["step", "rows", "min", "median", "90th percentile", "max", "mean characters",
                    "truncated (hit max_tokens)"], rows)
    return f'<div class="charts">{"".join(charts)}</div>{table}' + _note(
        "Lengths are completion tokens as the teacher counted them, else characters.")


def _quantile(sorted_values: list, share: float):
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def judge_scores(plan: Plan, con) -> str:
    judges = [st for st in plan.steps if st.score_scale is not None]
    if not judges:
        return _note("No step in this spec scores rows (a judge step), so there are no scores to show.")
    charts, rows = [], []
    for st in judges:
        data = _output_rows(con, st)
        scores = []
        for text, _, _ in data:
            try:
                scores.append(float(text))
            except (TypeError, ValueError):
                pass
        lo, hi = st.score_scale
        charts.append(_figure(svg.histogram(scores, st.spec.output, lo=lo, hi=hi, integer_bins=hi - lo <= 20,
                                            colour=svg.PALETTE[2]), f"{st.name}: {st.spec.output}"))
        mean = sum(scores) / len(scores) if scores else None
        rows.append([st.name, len(data), len(scores), len(data) - len(scores), mean,
                     min(scores, default=None), max(scores, default=None)])
    table = _table(["judge step", "rows", "scored", "not a number", "mean", "min", "max"], rows)
    return f'<div class="charts">{"".join(charts)}</div>{table}' + judge_vs_people(plan, con)


def judge_vs_people(plan: Plan, con) -> str:
    """How each judge agrees with people's ratings from `datagen review` (datagen/review/agreement.py)."""
    from datagen.review.agreement import judge_agreement

    found = judge_agreement(con, plan)
    if not found:
        return _note("No people's ratings of judged rows yet: rate some in `datagen review` to measure the judge.")
    def cell(value: float | None, rows: int) -> str:
        return "" if not rows else "undefined" if value is None else f"{value:.2f}"

    return "<h3>Judge vs people</h3>" + _table(
        ["judge step", "Cohen's kappa (pass/fail)", "rows", "agree", "judge pass at", "Spearman (1-5)", "rows"],
        [[a.judge, cell(a.kappa, a.kappa_rows), a.kappa_rows, "" if a.observed is None else f"{a.observed:.0%}",
          f"score >= {a.pass_at:g}", cell(a.spearman, a.spearman_rows), a.spearman_rows] for a in found])


def meta_coverage(plan: Plan, con) -> str:
    from datagen.strategies import strategy_of

    steps = [(st, strategy_of(st.spec).coverage_columns(st.spec)) for st in plan.steps]
    steps = [(st, columns) for st, columns in steps if columns]
    if not steps:
        return _note("No meta step with meta-information (`meta:`) in this spec, so there is no coverage to show.")
    selected = stats.curated_ids(con) or set()
    return "".join(_meta_for_step(con, st, columns, selected) for st, columns in steps)


def _meta_for_step(con, st, listed: dict[str, list[str]], selected: set[str]) -> str:
    dims = list(listed)
    view_cols = set(stats.columns_of(con, st.name))
    missing = [d for d in dims if d not in view_cols]
    if missing:
        return _note(f"{st.name}: its rows have no column for {', '.join(missing)}.")
    data = stats.text_columns(con, st.name, dims)
    out = [f"<h3>{escape(st.name)}</h3>"]
    if len(dims) >= 2:
        a, b = dims[0], dims[1]
        cells: dict[tuple[str, str], int] = {}
        chosen: dict[tuple[str, str], int] = {}
        for row in data:
            key = (str(row[1]), str(row[2]))
            cells[key] = cells.get(key, 0) + 1
            chosen[key] = chosen.get(key, 0) + (row[0] in selected)
        notes = {k: f" ({v} sel.)" for k, v in chosen.items() if selected} if selected else None
        rows_l = sorted({k[0] for k in cells} | set(listed[a]))
        cols_l = sorted({k[1] for k in cells} | set(listed[b]))
        out.append(svg.heatmap(a, b, rows_l, cols_l, cells, notes))
    charts = []
    for i, d in enumerate(dims):
        counts: dict[str, int] = {v: 0 for v in listed[d]}
        for row in data:
            counts[str(row[i + 1])] = counts.get(str(row[i + 1]), 0) + 1
        charts.append(_figure(svg.hbars(sorted(counts.items()), width=520, colour=svg.PALETTE[1]), f"rows by {d}"))
    out.append(f'<div class="charts">{"".join(charts)}</div>')
    return "".join(out)


def embedding_map(con) -> str:
    if not stats.has_relation(con, "embeddings"):
        return _note("No embeddings in this store: no curation stage has embedded rows (semantic dedup or "
                     "diversity selection), so there is no map.")
    model, rows = stats.embedding_sample(con, MAX_POINTS)
    if model is None:
        return _note("No embeddings in this store yet: run a curation block with semantic dedup or diversity "
                     "selection to get a map.")
    if len(rows) < 3:
        return _note(f"Only {len(rows)} embedded rows: too few for a map.")
    coords, share = pca_2d([r[1] for r in rows])
    selected = stats.curated_ids(con)
    dropped = stats.dropped_at(con)
    points = []
    for (rid, _), (x, y) in zip(rows, coords):
        if selected is not None and rid in selected:
            group, text = "selected", f"{rid}: selected"
        elif rid in dropped:
            group, text = "dropped", f"{rid}: dropped at {dropped[rid]}"
        else:
            group = "not selected" if selected is not None else "rows"
            text = f"{rid}: {group}"
        points.append((float(x), float(y), group, text))
    caption = (f"{len(rows):,} rows embedded with {public_model(model, Path('.'))}, projected on their first two "
               f"principal components ({share:.0%} of the variance)")
    return _figure(svg.scatter(points, GROUP_COLOURS), caption)


def pca_2d(vectors: list) -> tuple[list[tuple[float, float]], float]:
    """The first two principal components of the vectors (numpy SVD), and the share of variance they explain."""
    import numpy as np

    x = np.asarray([list(v) for v in vectors], dtype=np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(x), 1))])
    total = float((s ** 2).sum()) or 1.0
    return [tuple(c) for c in coords.tolist()], float((s[:2] ** 2).sum()) / total


SECONDS_NOTE = ("Generation seconds are wall-clock time: each request holds its share of the time its step spent "
                "generating (the engine's start not included), the same figure as the run's table and the card.")


def teachers(plan: Plan, con) -> str:
    totals = stats.token_totals(con)
    if not totals:
        return _note("No requests in the store yet: run the spec first.")
    per = stats.per_teacher(totals)
    rows = []
    for name, t in per.items():
        spec = plan.spec.teachers.get(name)
        model = public_model(spec.model, plan.loaded.dir) if spec else "(not in this spec)"
        rate = t["completion_tokens"] / t["seconds"] if t["seconds"] else None
        rows.append([name, spec.backend if spec else "", model, int(t["requests"]), int(t["done"]), int(t["failed"]),
                     int(t["prompt_tokens"]), int(t["completion_tokens"]), float(t["seconds"]), rate,
                     usd(t["cost_usd"])])
    charts = [_figure(svg.hbars([(n, t["completion_tokens"]) for n, t in per.items()], width=520),
                      "completion tokens per teacher"),
              _figure(svg.hbars([(n, round(t["seconds"], 1)) for n, t in per.items()], width=520,
                                colour=svg.PALETTE[1], unit=" s"), "generation seconds per teacher")]
    by_step = _table(["step", "teacher", "requests", "done", "failed", "prompt tokens", "completion tokens",
                      "generation seconds", "cost (USD)"],
                     [[t["step"], t["teacher"], t["requests"], t["done"], t["failed"], t["prompt_tokens"],
                       t["completion_tokens"], float(t["seconds"]), usd(t["cost_usd"])] for t in totals])
    total = functools.reduce(stats.add_cost, [t["cost_usd"] for t in totals], None)
    return (f'<div class="charts">{"".join(charts)}</div>'
            + _table(["teacher", "backend", "model", "requests", "done", "failed", "prompt tokens",
                      "completion tokens", "generation seconds", "completion tokens per second", "cost (USD)"],
                     rows)
            + by_step + _note(f"Cost in all: {usd(total)} (\"-\": no price declared). {SECONDS_NOTE}"))
