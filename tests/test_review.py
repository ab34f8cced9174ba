"""`datagen review`: the page in real headless Chromium (Debian's, driven by Playwright), its JSON API, its guard
(token, loopback), people's decisions honoured by curation and export, and a judge measured against people.

One store is built against the scripted teacher (a label step with soft labels, a judge scoring 1-5, a regex filter);
each test works on its own copy of that folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datagen.cli import app as cli
from datagen.spec.load import load_spec
from datagen.store.connection import open_store
from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">What is 8-1?'
# question, the judge's score of its answer (1-5)
PROBLEMS = [("What is 2+3?", 5), ("What is 4*4?", 4), ("What is 10-7?", 2), ("What is 9/3?", 1),
            ("What is 6+6?", 3), (HOSTILE, 5), ("Say nothing useful.", 1)]

SPEC = """\
name: rev
seed: 1
teachers:
  remote:
    backend: openai
    base_url: {base_url}
    model: scripted
    api_key_env: TEACHER_API_KEY
    sampling: {{temperature: 0, max_tokens: 64}}
sources:
  problems:
    path: data/problems.jsonl
steps:
  - name: solve
    strategy: label
    teacher: remote
    input: problems
    prompt: "{{{{ question }}}}"
    output: solution
    logprobs: 2
  - name: grade
    strategy: judge
    teacher: remote
    input: solve
    rubric: Is the answer right?
    scale: [1, 5]
curation:
  input: solve
  filters:
    - {{type: regex, column: solution, must_match: "####"}}
"""


def reply(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    if "strict grader" in prompt:  # the judge: a known score per question
        score = next(s for q, s in PROBLEMS if q in prompt)
        return json.dumps({"reason": "checked the arithmetic", "score": score})
    if "nothing useful" in prompt:
        return "I would rather not."  # no final answer: the regex filter drops it
    return f"Working on: {prompt} #### {len(prompt)}"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review") / "proj"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "problems.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q, _ in PROBLEMS))
    mp = pytest.MonkeyPatch()
    mp.setenv("TEACHER_API_KEY", "sk-test-review")
    try:
        from datagen.api import run

        with ScriptedServer(reply) as server:
            (folder / "spec.yaml").write_text(SPEC.format(base_url=server.base_url))
            run(load_spec(folder / "spec.yaml"), log=lambda m: None)
        yield folder
    finally:
        mp.undo()


@pytest.fixture
def spec(built, tmp_path, monkeypatch) -> Path:
    """A copy of the built folder (spec, data, store) of this test's own."""
    monkeypatch.setenv("TEACHER_API_KEY", "sk-test-review")
    shutil.copytree(built, tmp_path / "proj")
    return tmp_path / "proj" / "spec.yaml"


def query(spec: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = open_store(load_spec(spec).store_path, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def solve_id(spec: Path, question: str) -> str:
    return query(spec, "SELECT _id FROM solve WHERE question = ?", [question])[0][0]


class Client:
    """The app in this process (Starlette's TestClient) with the token, as the page calls it."""

    def __init__(self, spec: Path, reviewer: str = "alice"):
        from starlette.testclient import TestClient

        from datagen.api import plan
        from datagen.review.app import StoreAccess, make_app, prepare

        p = plan(spec)
        prepare(p)
        self.token = "t0ken"
        self.access = StoreAccess(p.loaded.store_path, spec.parent / "tmp")
        self.http = TestClient(make_app(p, self.access, self.token, reviewer), base_url="http://127.0.0.1")
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params):
        return self.http.get(path, params=params, headers=self.auth)

    def post(self, path: str, body: dict):
        return self.http.post(path, json=body, headers=self.auth)


# --- the page in Chromium ---------------------------------------------------------------------------------------


def start_review(spec: Path) -> tuple[subprocess.Popen, str]:
    """`datagen review SPEC --port 0` as a user runs it; returns the process and the address it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "review", str(spec), "--port", "0", "--reviewer",
                             "alice"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"review page: (http://127\.0\.0\.1:\d+/\?token=[\w-]+)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("datagen review printed no address:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def choose_row(page, row_id: str) -> None:
    from playwright.sync_api import expect

    page.click(f'#rows tr[data-id="{row_id}"]')
    expect(page.locator("#story-title")).to_have_text(re.compile(re.escape(row_id) + "$"))


def open_page(browser, url: str, **context):
    """A page on the review address, loaded; the page's console errors collect in `page.errors`."""
    page = browser.new_context(viewport={"width": 1500, "height": 1100}, **context).new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page


def show_rows(page, rel: str, count: int) -> None:
    from playwright.sync_api import expect

    page.select_option("#rel", rel)
    expect(page.locator("#count")).to_have_text(f"{count} rows match")


def test_review_in_chromium(spec, tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `bash scripts/ci_system_deps.sh` installs Debian's `chromium`")
    from playwright.sync_api import expect, sync_playwright

    dropped, rated, edited = (solve_id(spec, q) for q in ("What is 2+3?", "What is 4*4?", "What is 10-7?"))
    hostile = solve_id(spec, HOSTILE)
    proc, url = start_review(spec)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            # a hostile row is text: visible as written, nothing ran, no element made of it; also with the
            # page's Content-Security-Policy switched off, so the rendering itself is what keeps it inert
            page = open_page(browser, url, bypass_csp=True)
            show_rows(page, "solve", 7)
            assert HOSTILE in page.inner_text("#rows")
            choose_row(page, hostile)
            assert HOSTILE in page.inner_text("#story-body")
            assert page.evaluate("window.__pwned") is None
            assert page.locator("#rows img, #rows script, #story-body img, #story-body script").count() == 0
            page.context.close()

            page = open_page(browser, url)  # as a person opens it: the policy on
            assert page.text_content("#title") == "rev"
            show_rows(page, "solve", 7)

            choose_row(page, dropped)
            page.click("#drop")  # without a reason: refused, and the page says why
            expect(page.locator("#message")).to_contain_text("needs a reason")
            page.fill("#reason", "the question is off topic")
            page.click("#drop")
            expect(page.locator("#message")).to_have_text("dropped")

            choose_row(page, rated)
            page.click("#pass")
            expect(page.locator("#message")).to_have_text("rated pass")
            page.click("#scores button[data-score='4']")
            expect(page.locator("#message")).to_have_text("rated 4 of 5")

            choose_row(page, edited)
            assert page.locator(".strip .tok").count() > 3  # the soft labels' heat strip
            page.fill("#edit-text", "10 - 7 = 3. #### 3")
            page.fill("#edit-reason", "a plain answer")
            page.click("#save-edit")
            expect(page.locator("#message")).to_contain_text("edit saved")
            expect(page.locator("#reply")).to_have_text("10 - 7 = 3. #### 3")

            # the store holds what the page did: people's decisions, with the reviewer, nothing overwritten
            assert query(spec, "SELECT stage, owner, kept, reason, reviewer FROM decisions WHERE owner = 'human'") \
                == [("human", "human", False, "the question is off topic", "alice")]
            assert sorted(query(spec, "SELECT row_id, reviewer, verdict, score FROM human_ratings"),
                          key=str) == sorted([(rated, "alice", True, None), (rated, "alice", None, 4.0)], key=str)
            (rev_id, previous, text), = query(spec, "SELECT _id, previous_id, text FROM human_revisions")
            assert (previous, text) == (edited, "10 - 7 = 3. #### 3")
            assert query(spec, "SELECT parent_id, role FROM lineage WHERE child_id = ?", [rev_id]) \
                == [(edited, "revision_of")]
            assert query(spec, "SELECT text FROM outputs WHERE _id = ?", [edited])[0][0].startswith("Working on:")

            # curation afterwards, while the page is still open, honours the drop; export the edit
            result = CliRunner().invoke(cli, ["curate", str(spec)])
            assert result.exit_code == 0, result.output
            assert "review:human: 7 in, 6 out" in result.output
            curated = {r[0] for r in query(spec, "SELECT _id FROM curated")}
            assert dropped not in curated and edited in curated and hostile in curated
            result = CliRunner().invoke(cli, ["export", str(spec), "--out", str(tmp_path / "out")])
            assert result.exit_code == 0, result.output
            exported = exported_replies(tmp_path / "out")
            assert "10 - 7 = 3. #### 3" in exported.values() and not any("2+3" in q for q in exported)

            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            assert "review:human" in page.inner_text("#funnel")
            show_rows(page, "solve", 7)
            page.select_option("#status", "dropped")
            page.click("#apply")
            expect(page.locator("#count")).to_have_text("2 rows match")  # the person's drop and the filter's
            assert "dropped by alice: the question is off topic" not in page.inner_text("#rows")
            assert "by alice: the question is off topic" in page.inner_text("#rows")
            page.select_option("#status", "all")
            page.click("#apply")
            expect(page.locator("#count")).to_have_text("7 rows match")
            choose_row(page, edited)
            shot = ROOT / "specs" / "review.png" if os.environ.get("DATAGEN_SCREENSHOTS") else tmp_path / "review.png"
            page.screenshot(path=str(shot), full_page=True)
            assert [e for e in page.errors if "status of 400" not in e] == []  # the refused drop's 400 only
            browser.close()
    finally:
        stop(proc)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert len(image.getcolors(maxcolors=1 << 20)) > 50  # text, tables, the heat strip: far from a blank page


def exported_replies(folder: Path) -> dict[str, str]:
    """user message -> assistant reply of every exported row."""
    import pyarrow.parquet as pq

    out = {}
    for f in sorted((folder / "data").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            msgs = row["messages"]
            out[next(m["content"] for m in msgs if m["role"] == "user")] = msgs[-1]["content"]
    return out


# --- the guard: token and loopback -------------------------------------------------------------------------------


def test_without_the_token_401_and_only_loopback_listens(spec):
    import httpx
    import psutil

    before = query(spec, "SELECT count(*) FROM decisions")
    proc, url = start_review(spec)
    try:
        base, token = url.split("/?token=")
        for path in ("/", "/api/overview", "/api/rows?rel=solve", "/static/review.js", "/favicon.ico"):
            assert httpx.get(base + path).status_code == 401, path
            assert httpx.get(base + path, params={"token": token + "x"}).status_code == 401, path
        row = solve_id(spec, "What is 6+6?")
        refused = httpx.post(base + "/api/decisions", json={"row_id": row, "kept": False, "reason": "x"})
        assert refused.status_code == 401 and "token" in refused.json()["error"]
        assert query(spec, "SELECT count(*) FROM decisions") == before  # nothing written
        page = httpx.get(url)
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        ok = httpx.get(base + "/api/overview", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["name"] == "rev"
        assert httpx.get(url, headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding

        port = int(base.rsplit(":", 1)[1])
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == "LISTEN"]
        assert listening == [("127.0.0.1", port)]
        others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                  if a.family == socket.AF_INET and not a.address.startswith("127.")]
        for address in others:  # the machine's other addresses do not reach it
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
    finally:
        stop(proc)
    assert proc.returncode == 0  # SIGTERM stops it cleanly


# --- the JSON API ------------------------------------------------------------------------------------------------


def test_bad_input_says_what_to_change(spec):
    c = Client(spec)
    row = solve_id(spec, "What is 6+6?")
    judged = query(spec, "SELECT _id FROM grade LIMIT 1")[0][0]
    source = query(spec, "SELECT _id FROM problems LIMIT 1")[0][0]
    cases = [
        ("/api/decisions", {"row_id": row, "kept": "yes"}, "`kept` must be true or false, got 'yes'"),
        ("/api/decisions", {"row_id": row, "kept": False}, "a drop needs a reason"),
        ("/api/decisions", {"row_id": "nope", "kept": True}, "no row with id nope"),
        ("/api/decisions", {"kept": True}, "`row_id` must be a row's `_id`"),
        ("/api/ratings", {"row_id": row, "score": 7}, "`score` must be a whole number from 1 to 5, got 7"),
        ("/api/ratings", {"row_id": row, "verdict": "good"}, '`verdict` must be "pass" or "fail"'),
        ("/api/ratings", {"row_id": row, "verdict": "pass", "score": 3}, "give exactly one"),
        ("/api/edits", {"row_id": row, "text": "  "}, "`text` must be non-empty text"),
        ("/api/edits", {"row_id": judged, "text": "5"}, "not a text reply (a judge's score); rate the row instead"),
        ("/api/edits", {"row_id": source, "text": "x"}, "a source's rows have no reply to edit"),
    ]
    for path, body, message in cases:
        got = c.post(path, body)
        assert got.status_code == 400 and message in got.json()["error"], (body, got.json())
    assert c.http.post("/api/decisions", content="row", headers=c.auth).json()["error"].startswith("send the body")
    assert "`status` must be all, kept or dropped" in c.get("/api/rows", rel="solve", status="maybe").json()["error"]
    assert "`score_min` must be a number" in c.get("/api/rows", rel="solve", score_min="high").json()["error"]
    assert "`nope` is not a step, a source or `curated`" in c.get("/api/rows", rel="nope").json()["error"]
    assert query(spec, "SELECT count(*) FROM decisions WHERE owner = 'human'") == [(0,)]
    assert query(spec, "SELECT count(*) FROM human_ratings") == [(0,)]


def test_filters_page_and_story(spec):
    c = Client(spec)
    useless = solve_id(spec, "Say nothing useful.")

    def ids(**params) -> list[str]:
        got = c.get("/api/rows", rel="solve", **params).json()
        assert len(got["rows"]) == min(got["total"], int(params.get("limit", 50)))
        return [r["id"] for r in got["rows"]]

    assert ids(status="dropped") == [useless]
    assert ids(reason="must_match") == [useless] and ids(reason="no such reason") == []
    assert ids(stage="filter:regex", status="kept") == [r for r in ids() if r != useless]
    assert ids(q="10-7") == [solve_id(spec, "What is 10-7?")]
    assert ids(q="100%_") == []  # LIKE's wildcards are plain characters
    assert ids(limit=2) + ids(limit=2, offset=2) == ids()[:4]
    # a judge step's rows filter by its score
    scores = dict(query(spec, "SELECT _id, output FROM grade"))  # a judge's output column: its score
    got = c.get("/api/rows", rel="grade", score_min=2, score_max=4).json()
    assert got["score"] == "output" and {r["id"] for r in got["rows"]} == {i for i, s in scores.items() if 2 <= s <= 4}
    curated = c.get("/api/rows", rel="curated").json()["rows"]  # in selection order
    assert [r["id"] for r in curated] == [r[0] for r in query(spec, "SELECT _id FROM curated")] and len(curated) == 6

    s = c.get(f"/api/row/{solve_id(spec, 'What is 4*4?')}").json()
    assert s["relation"] == "solve" and s["messages"] == [{"role": "user", "content": "What is 4*4?"}]
    assert s["reply"].startswith("Working on: What is 4*4?") and s["editable"]
    assert s["input"]["relation"] == "problems" and ["question", "What is 4*4?"] in s["input"]["columns"]
    assert [t["token"] for t in s["soft_labels"]][:2] == ["Working", "on:"]
    assert abs(s["soft_labels"][0]["p"] - 0.905) < 0.001
    assert [tok for tok, _ in s["soft_labels"][0]["top"]] == ["Working", "alt1"]  # the scripted top-2
    assert [d["stage"] for d in s["decisions"]] == ["filter:regex"]
    assert {c["role"] for c in s["lineage"]["children"]} == {"input"}  # the judge's verdict on it
    assert c.get("/api/row/nope").json()["error"] == "no row with id nope in this store"


# --- people's decisions in curation and export -----------------------------------------------------------------


def test_a_persons_keep_rescues_a_filtered_row_and_a_drop_leaves_the_export(spec, tmp_path):
    from datagen.api import curate, export

    c = Client(spec, reviewer="bob")
    useless, late = solve_id(spec, "Say nothing useful."), solve_id(spec, "What is 6+6?")
    assert c.post("/api/decisions", {"row_id": useless, "kept": True, "reason": "a fine refusal"}).status_code == 200
    funnel = curate(spec, log=lambda m: None)
    assert [(f["stage"], f["rows_in"], f["rows_out"]) for f in funnel] == [("review:human", 7, 7),
                                                                          ("filter:regex", 7, 7)]
    (kept, reason), = query(spec, "SELECT kept, reason FROM decisions WHERE row_id = ? AND stage = 'filter:regex'",
                            [useless])
    assert kept and reason == "kept by bob in review over: no match for must_match '####'"
    assert useless in {r[0] for r in query(spec, "SELECT _id FROM curated")}

    # a drop after the last curation run: the export already leaves the row out
    assert c.post("/api/decisions", {"row_id": late, "kept": False, "reason": "wrong"}).status_code == 200
    assert c.get("/api/overview").json()["funnel"]["review"] == {"kept": 1, "dropped": 1, "rated": 0, "edited": 0,
                                                                 "applied": False}
    result = export(spec, out=tmp_path / "out")
    replies = exported_replies(tmp_path / "out")
    assert sum(result.splits.values()) == 6 and "What is 6+6?" not in replies
    assert replies["Say nothing useful."] == "I would rather not."
    # a later keep of the same row wins over the earlier drop; both stay in the store
    c.post("/api/decisions", {"row_id": late, "kept": True})
    assert query(spec, "SELECT kept FROM decisions WHERE row_id = ? AND owner = 'human' ORDER BY created_at",
                 [late]) == [(False,), (True,)]
    assert "What is 6+6?" in exported_replies(export(spec, out=tmp_path / "again").path)


def test_edits_chain_and_curation_reads_the_newest(spec):
    from datagen.api import curate

    c = Client(spec)
    row = solve_id(spec, "Say nothing useful.")
    first = c.post("/api/edits", {"row_id": row, "text": "Nothing. #### 0"}).json()["revision_id"]
    second = c.post("/api/edits", {"row_id": row, "text": "Still nothing. #### 0", "reason": "clearer"}).json()
    assert query(spec, "SELECT child_id, parent_id FROM lineage WHERE role = 'revision_of' ORDER BY parent_id = ?",
                 [row]) == [(second["revision_id"], first), (first, row)]
    funnel = curate(spec, log=lambda m: None)
    assert funnel[-1] == {"stage": "filter:regex", "rows_in": 7, "rows_out": 7, "seconds": funnel[-1]["seconds"]}
    story = c.get(f"/api/row/{row}").json()
    assert story["current_reply"] == "Still nothing. #### 0" and story["reply"] == "I would rather not."
    assert [r["text"] for r in story["revisions"]] == ["Nothing. #### 0", "Still nothing. #### 0"]


# --- the judge against people --------------------------------------------------------------------------------------


def test_judge_agreement_in_the_page_status_and_report(spec, tmp_path):
    from datagen.api import report
    from datagen.review.agreement import cohen_kappa, spearman

    c = Client(spec)
    ids = [solve_id(spec, q) for q, _ in PROBLEMS[:5]]  # the judge scored them 5, 4, 2, 1, 3
    for rid, verdict in zip(ids[:4], ["pass", "fail", "fail", "fail"]):
        assert c.post("/api/ratings", {"row_id": rid, "verdict": verdict}).status_code == 200
    for rid, score in zip(ids, [5, 3, 2, 1, 4]):
        c.post("/api/ratings", {"row_id": rid, "score": score})
    c.post("/api/ratings", {"row_id": ids[1], "verdict": "pass"})  # a second thought: the latest counts
    # judge pass (score >= 3): T, T, F, F; people: T, T, F, F after the second thought -> kappa 1
    a, = c.get("/api/overview").json()["agreement"]
    assert (a["judge"], a["kappa_rows"], a["spearman_rows"], a["pass_at"]) == ("grade", 4, 5, 3.0)
    assert a["kappa"] == pytest.approx(1.0) and a["spearman"] == pytest.approx(0.9)
    c.post("/api/ratings", {"row_id": ids[1], "verdict": "fail"})  # back: people T, F, F, F
    a, = c.get("/api/overview").json()["agreement"]
    assert a["kappa"] == pytest.approx(0.5) and a["observed"] == pytest.approx(0.75)
    assert a["kappa"] == pytest.approx(cohen_kappa([True, True, False, False], [True, False, False, False]))

    result = CliRunner().invoke(cli, ["status", str(spec)])
    assert result.exit_code == 0, result.output
    assert ("judge grade vs people: Cohen's kappa 0.50 on 4 pass/fail rows (agree on 75%; judge pass = score >= 3); "
            "Spearman 0.90 on 5 rows scored 1-5") in result.output
    page = report(spec, out=tmp_path / "r.html").read_text()
    assert "<h3>Judge vs people</h3>" in page
    assert re.search(r"<td>grade</td><td>0\.50</td><td class=\"n\">4</td><td>75%</td><td>score &gt;= 3</td>"
                     r"<td>0\.90</td><td class=\"n\">5</td>", page)
    assert spearman([1, 2, 3], [3, 3, 3]) is None and cohen_kappa([True] * 3, [True] * 3) is None


def test_kappa_and_spearman_match_sklearn_and_scipy():
    import random

    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    from datagen.review.agreement import cohen_kappa, spearman

    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(3, 40)
        a = [rng.random() < 0.6 for _ in range(n)]
        b = [x if rng.random() < 0.7 else not x for x in a]
        if len(set(a)) == 2 or len(set(b)) == 2:
            assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
        x = [rng.randint(1, 5) for _ in range(n)]
        y = [v + rng.choice([-1, 0, 0, 1, 2]) for v in x]
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


# --- while a run holds the store ----------------------------------------------------------------------------------


def test_read_only_while_another_process_holds_the_store(spec):
    c = Client(spec)  # started while the store was free
    store, row = load_spec(spec).store_path, solve_id(spec, "What is 6+6?")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(120)", str(store)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        over = c.get("/api/overview").json()
        assert over["read_only"] and f"process {holder.pid} holds the store" in over["why"]
        assert c.get("/api/rows", rel="solve").json()["total"] == 7  # read from a copy
        refused = c.post("/api/decisions", {"row_id": row, "kept": True})
        assert refused.status_code == 409 and "nothing was saved" in refused.json()["error"]
        from datagen.api import plan
        from datagen.review.app import prepare

        assert prepare(plan(spec)) == f"process {holder.pid}"  # `datagen review` starting now: read-only
    finally:
        holder.kill()
        holder.wait()
    assert not c.get("/api/overview").json()["read_only"]  # the run has ended: writable again
    assert c.post("/api/decisions", {"row_id": row, "kept": True}).status_code == 200


def test_the_command_says_what_to_change(spec):
    result = CliRunner().invoke(cli, ["review", str(spec), "--port", "70000"])
    assert result.exit_code == 2 and "--port must be from 0 to 65535 (0: any free port), got 70000" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["review", str(spec), "--port", str(port)])
        assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
        assert "--port 0 for any free one" in result.output
    shutil.rmtree(load_spec(spec).store_path.parent)
    result = CliRunner().invoke(cli, ["review", str(spec)])
    assert result.exit_code == 2 and "no store at" in result.output and "run `datagen run`" in result.output


def test_a_trajectorys_tool_calls_are_found_through_its_turns():
    from datagen.store.connection import open_scratch
    from datagen.store.review import tool_calls_of

    con = open_scratch()
    # three assistant turns t1 <- t2 <- t3 (t3 is the row); t1 and t3 called tools; another trajectory's call
    con.execute("INSERT INTO lineage VALUES ('t2', 't1', 'previous_turn'), ('t3', 't2', 'previous_turn'), "
                "('t3', 'q', 'input'), ('u2', 'u1', 'previous_turn')")
    con.execute("INSERT INTO tool_calls (output_id, call_index, step, tool, arguments, result) VALUES "
                "('t1', 0, 'a', 'add', '{}', '3'), ('t1', 1, 'a', 'mul', '{}', '6'), ('t3', 0, 'a', 'add', '{}', '9'), "
                "('u1', 0, 'a', 'sub', '{}', '0')")
    calls = tool_calls_of(con, "t3")
    assert [(c["output_id"], c["call_index"], c["tool"]) for c in calls] == [("t1", 0, "add"), ("t1", 1, "mul"),
                                                                            ("t3", 0, "add")]
