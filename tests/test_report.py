"""`datagen report`: one self-contained HTML page, checked as a person would see it in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from datagen.cli import app
from datagen.publish.report import SECTIONS, build_html, _meta_for_step
from datagen.spec.load import load_spec
from datagen.api import plan as build_plan
from datagen.store.connection import open_store
from tests.export_fixtures import build_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def html_of(spec: Path) -> str:
    loaded = load_spec(spec)
    con = open_store(loaded.store_path, read_only=True)
    try:
        return build_html(build_plan(loaded), con)
    finally:
        con.close()


def add_curation_results(spec: Path) -> None:
    """What a curation run leaves in the store: decisions per stage, embeddings, the selected rows."""
    import numpy as np

    con = open_store(load_spec(spec).store_path)
    try:
        con.execute("CREATE TABLE IF NOT EXISTS embeddings (row_id VARCHAR, model VARCHAR NOT NULL, "
                    "text_hash VARCHAR NOT NULL, vector FLOAT[])")
        con.execute("CREATE TABLE IF NOT EXISTS _curated (row_id VARCHAR NOT NULL, rank INTEGER NOT NULL)")
        ids = [r[0] for r in con.execute("SELECT _id FROM solve ORDER BY _id").fetchall()]
        dropped_regex, dropped_dedup, selected = ids[:2], ids[2:5], ids[5:9]
        for rid in ids:
            con.execute("INSERT INTO decisions (row_id, stage, kept, reason, created_at, owner) VALUES "
                        "(?, 'filter:regex', ?, ?, TIMESTAMP '2026-01-01 00:00:01', 'curation')",
                        [rid, rid not in dropped_regex, "no final answer" if rid in dropped_regex else None])
            if rid not in dropped_regex:
                con.execute("INSERT INTO decisions (row_id, stage, kept, reason, created_at, owner) VALUES "
                            "(?, 'dedup:exact', ?, ?, TIMESTAMP '2026-01-01 00:00:02', 'curation')",
                            [rid, rid not in dropped_dedup, "duplicate" if rid in dropped_dedup else None])
        rng = np.random.default_rng(0)
        for i, rid in enumerate(ids):
            con.execute("INSERT INTO embeddings VALUES (?, 'bundled:all-minilm-l6-v2', ?, ?)",
                        [rid, f"h{i}", rng.normal(size=16).astype("float32").tolist()])
        for rank, rid in enumerate(selected):
            con.execute("INSERT INTO _curated VALUES (?, ?)", [rid, rank])
    finally:
        con.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        spec = build_store(tmp_path_factory.mktemp("report"), mp)
        before = html_of(spec)  # a plain run: no curation, no embeddings
        add_curation_results(spec)
        yield SimpleNamespace(spec=spec, before=before)
    finally:
        mp.undo()


def test_sections_say_why_they_are_empty(store):
    page = store.before
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "No step in this spec scores rows" in page
    assert "No meta step with meta-information" in page
    assert "No embeddings in this store" in page
    assert "this spec has no curation block" in page


def test_funnel_and_embedding_map_from_curation_results(store):
    page = html_of(store.spec)
    # the funnel: 12 rows, 10 after the regex filter, 7 after dedup, 4 selected
    for label, n in (("solve rows", 12), ("after filter:regex", 10), ("after dedup:exact", 7), ("selected", 4)):
        assert re.search(rf"{re.escape(label)}: {n}</title>", page), label
    assert "no final answer (2)" in page and "duplicate (3)" in page
    # the map: every embedded row is a point, coloured by what curation did with it
    points = re.findall(r'<circle cx="[\d.]+" cy="[\d.]+" r="3.5" fill="(#[0-9a-f]+)"', page)
    assert len(points) == 12
    assert points.count("#2e7d32") == 4 and points.count("#d32f2f") == 5 and points.count("#9e9e9e") == 3
    assert "selected (4)" in page and "dropped (5)" in page


def test_page_is_self_contained(store):
    page = html_of(store.spec)
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", page, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)


def test_meta_coverage_is_a_heat_map_for_two_dimensions():
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE synthetic AS SELECT * FROM (VALUES ('a', 'fractions', 'easy'), "
                "('b', 'fractions', 'easy'), ('c', 'fractions', 'hard'), ('d', 'percentages', 'easy')) "
                "t(_id, topic, difficulty)")
    step = SimpleNamespace(name="synthetic")
    listed = {"topic": [], "difficulty": ["easy", "medium", "hard"]}  # what meta.coverage_columns gives
    html = _meta_for_step(con, step, listed, selected={"a", "d"})
    assert '<table class="heat">' in html
    cells = re.findall(r'<td[^>]*title="([^"]+)"[^>]*>([^<]*)</td>', html)
    assert ("fractions, easy: 2", "2 (1 sel.)") in cells
    assert ("percentages, easy: 1", "1 (1 sel.)") in cells
    assert sum(1 for title, _ in cells if title == "no rows") == 3  # medium is never covered, hard only once
    assert "rows by topic" in html and "rows by difficulty" in html


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def screenshot(page: Path, tmp: Path) -> tuple[Path, list[str]]:
    png = tmp / f"{page.stem}.png"
    done = chromium([f"--screenshot={png}", "--window-size=1200,2000", page.resolve().as_uri()], tmp)
    assert png.exists(), done.stderr[-2000:]
    return png, console_errors(done.stderr)


def needs_chromium():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `bash scripts/ci_system_deps.sh` (the README's test command runs it) "
                    "installs Debian's `chromium`")


def test_report_opens_in_headless_chromium(store, tmp_path):
    needs_chromium()
    from PIL import Image

    # the error check must be able to fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom')</script><p>x</p></body></html>")
    assert screenshot(bad, tmp_path)[1]

    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(store.spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    png, errors = screenshot(out, tmp_path)
    assert errors == []
    image = Image.open(png).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, bars, points: far from a blank page
    white = max(count for count, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.97 * image.width * image.height
    dom = chromium(["--dump-dom", out.resolve().as_uri()], tmp_path).stdout
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in dom, title


def test_default_report_path_is_beside_the_store(store):
    result = CliRunner().invoke(app, ["report", str(store.spec)])
    assert result.exit_code == 0, result.output
    path = store.spec.parent / "runs" / "tiny-report.html"
    assert path.exists() and f"wrote {path}" in result.output


def test_judge_scores_histogram_and_unparsed_scores():
    import duckdb

    from datagen.publish.report import judge_scores
    from datagen.store.migrations import migrate

    con = duckdb.connect(":memory:")
    migrate(con)
    scores = ["7", "7", "9", "3", "not a number"]
    for i, text in enumerate(scores):
        con.execute("INSERT INTO requests (key, step, status, completion_tokens) VALUES (?, 'grade', 'done', 5)",
                    [f"k{i}"])
        con.execute("INSERT INTO outputs (_id, key, step, text) VALUES (?, ?, 'grade', ?)", [f"r{i}", f"k{i}", text])
    con.execute("CREATE VIEW grade AS SELECT text AS score, _id, _finish_reason FROM outputs WHERE step = 'grade'")
    step = SimpleNamespace(name="grade", score_scale=(1, 10), spec=SimpleNamespace(strategy="judge", output="score",
                                                                                scale=(1, 10)))
    html = judge_scores(SimpleNamespace(steps=[step]), con)
    bars = dict(re.findall(r"<title>(\d+): (\d+)</title>", html))
    assert bars == {"1": "0", "2": "0", "3": "1", "4": "0", "5": "0", "6": "0", "7": "2", "8": "0", "9": "1", "10": "0"}
    assert len(re.findall(r"<rect ", html)) == 10  # one bar per score on the 1-10 scale
    assert '<td class="n">4</td><td class="n">1</td>' in html  # 4 scored, 1 not a number
