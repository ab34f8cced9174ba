"""Curation at a million rows with the embeddings already in the store: time per stage, peak memory, growth.

    .venv/bin/python tests/bench/curation.py --rows 1000000 --stored-embeddings [--sizes 100000,300000]

Each size runs in its own process (so each peak memory is its own) and:
1. builds the rows (curation_data.build_rows: real sentences, 5% planted near-duplicates) and loads them into a
   store through the product's path (load_spec, datagen.api.plan, sync_views): the source ingest, in rows/s;
2. stores one vector per distinct normalised text through datagen/store/embeddings.py (the embeddings ingest, in
   rows/s). The vectors are SYNTHESISED, not computed: MiniLM on 2 cores does about 150 texts/s, so a million texts
   would take about two hours. Each row is a random mix of topic directions (1,000 topics, so unrelated rows have
   cosines around 0.0-0.5) and each planted copy is its original's vector plus noise (cosine about 0.97), stored
   under MiniLM's identity so the curation run finds them all and embeds nothing;
3. in a new process, does what `datagen curate` does (load the spec and plan, open the store, `run_curation`) on a
   spec with two filters, exact + MinHash + semantic dedup and k-center selection to 10,000 rows (or
   `--select-method cluster`): its time, and its peak resident memory (getrusage), are curation's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from curation_data import THRESHOLD, build_rows, gb, max_rss

MINILM = "bundled:all-minilm-l6-v2"
SPEC = """\
name: scale
seed: 0
teachers:
  none: {{backend: openai, base_url: "http://127.0.0.1:9/v1", model: m}}
sources:
  rows: {{path: rows.jsonl}}
steps:
  - {{name: unused, strategy: label, teacher: none, input: rows, prompt: "{{{{ text }}}}"}}
curation:
  input: rows
  filters:
    - {{type: regex, column: text, must_not_match: "(?i)as an ai language model"}}
    - {{type: repetition, column: text, max_share: 0.5}}
  dedup:
    - {{type: exact, column: text}}
    - {{type: minhash, column: text, threshold: 0.8}}
    - {{type: semantic, column: text, threshold: {threshold}}}
  select: {{n: {n}, diversity: {{method: {method}, column: text}}}}
"""


def synthetic_vectors(n: int, pairs, dim: int = 384, topics: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(n, start + 100_000) - start
        pick = rng.integers(topics, size=(m, 2))
        out[start: start + m] = (centres[pick[:, 0]] + 0.6 * centres[pick[:, 1]]
                                 + 0.9 * rng.standard_normal((m, dim), dtype=np.float32))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    for a, b in pairs:  # a planted copy is close to its original
        v = out[a] + 0.012 * rng.standard_normal(dim, dtype=np.float32)
        out[b] = v / np.linalg.norm(v)
    return out


def prepare(n: int, select_n: int, method: str, work: Path) -> dict:
    """Rows and vectors into a store in `work`: the two ingests, timed."""
    from datagen.embed.encode import distinct, identity
    from datagen.spec.load import load_spec
    from datagen.api import plan as build_plan
    from datagen.store import embeddings
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    out: dict = {"rows": n}
    rows, pairs = build_rows(n)
    with (work / "rows.jsonl").open("w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    (work / "spec.yaml").write_text(SPEC.format(threshold=THRESHOLD, n=select_n, method=method))
    start, cpu = time.monotonic(), time.process_time()
    loaded = load_spec(work / "spec.yaml")
    con = open_store(loaded.store_path)
    plan = build_plan(loaded)
    written = time.monotonic()
    sync_views(con, plan.source_tables, plan.views)  # the Arrow tables the plan made, into the store file
    out["source_write_s"] = time.monotonic() - written
    out["source_ingest_s"], out["source_ingest_cpu_s"] = time.monotonic() - start, time.process_time() - cpu
    ids = [r for (r,) in con.execute("SELECT _id FROM rows").fetchall()]
    texts = [r["text"] for r in rows]
    vectors = synthetic_vectors(n, pairs)
    keys, _, first = distinct(texts)
    first_ids = [ids[i] for i in first]
    start, cpu = time.monotonic(), time.process_time()
    step = embeddings.BULK_ROWS  # a bulk import: batches DuckDB writes straight to the file (see store())
    for s in range(0, len(keys), step):
        embeddings.store(con, identity(MINILM), first_ids[s: s + step], keys[s: s + step], vectors[first[s: s + step]])
    out["embed_ingest_s"], out["distinct"] = time.monotonic() - start, len(keys)
    out["embed_ingest_cpu_s"] = time.process_time() - cpu
    con.close()
    (work / "pairs.json").write_text(json.dumps([[ids[a], ids[b]] for a, b in pairs]))
    return out


def curate(work: Path) -> dict:
    """What `datagen curate` does, in a process of its own: load the spec and plan, open the store, run curation."""
    from curation import run
    from curation.run import run_curation

    rss = []  # resident memory when each stage is recorded: where the peak builds up
    record = run.Recorder.record

    def noting(self, stage, *args):
        rss.append((stage, _rss()))
        return record(self, stage, *args)

    run.Recorder.record = noting
    from datagen.spec.load import load_spec
    from datagen.api import plan as build_plan
    from datagen.store.connection import open_store

    start, cpu = time.monotonic(), time.process_time()
    loaded = load_spec(work / "spec.yaml")
    plan = build_plan(loaded)
    con = open_store(loaded.store_path)
    out = {"plan_s": time.monotonic() - start}
    funnel = run_curation(con, loaded, plan, log=lambda s: None)
    out["curation_s"], out["curation_cpu_s"] = time.monotonic() - start, time.process_time() - cpu
    out["peak"], out["funnel"], out["rss"] = max_rss(), funnel, rss
    dropped = {r for (r,) in con.execute(
        "SELECT row_id FROM decisions WHERE starts_with(stage, 'dedup:') AND NOT kept").fetchall()}
    pairs = json.loads((work / "pairs.json").read_text())
    out["found"], out["planted"] = sum(1 for a, b in pairs if a in dropped or b in dropped), len(pairs)
    con.close()
    return out


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def report(r: dict) -> None:
    n = r["rows"]
    print(f"\n{n} rows: source ingest {r['source_ingest_s']:.1f} s, {n / r['source_ingest_s']:,.0f} rows/s "
          f"({n / r['source_ingest_cpu_s']:,.0f} per CPU second; JSONL through load_spec + plan + "
          f"sync_views; of which writing the Arrow table into the store {r['source_write_s']:.1f} s, "
          f"{n / r['source_write_s']:,.0f} rows/s); embeddings ingest {r['distinct']} vectors in "
          f"{r['embed_ingest_s']:.1f} s, {r['distinct'] / r['embed_ingest_s']:,.0f} rows/s "
          f"({r['distinct'] / r['embed_ingest_cpu_s']:,.0f} per CPU second)")
    rss = dict(r["rss"])
    for f in r["funnel"]:
        print(f"  {f['stage']:24s} {f['rows_in']:>9} in {f['rows_out']:>9} out {f['seconds']:8.1f} s   "
              f"resident after it {gb(rss.get(f['stage'], 0))}")
    print(f"  datagen curate's process: {r['curation_s']:.1f} s ({r['curation_cpu_s']:.1f} CPU s; of which "
          f"{r['plan_s']:.1f} s loading the spec and plan), peak memory {gb(r['peak'])}; planted pairs caught by "
          f"dedup: {r['found']} of {r['planted']}")


def run(sizes: list[int], select_n: int, method: str) -> None:
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="datagen-scale-") as tmp:
            result = {}
            for phase in ("prepare", "curate"):
                cmd = [sys.executable, __file__, phase, tmp, str(n), str(select_n), method]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{n} rows, {phase} failed:\n{done.stderr[-3000:]}")
                result.update(json.loads(done.stdout.strip().splitlines()[-1]))
        results.append(result)
        report(result)
    print("\ngrowth (datagen curate's process: seconds from loading the spec to the last decision, peak memory):")
    for r in results:
        per = r["curation_s"] / r["rows"] * 1e6
        print(f"  {r['rows']:>9} rows: {r['curation_s']:7.1f} s ({per:.0f} s per million rows; "
              f"{r['curation_cpu_s']:.1f} CPU s), {gb(r['peak'])}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    phase, folder, rows_n, select, how = sys.argv[1:6]
    if phase == "prepare":
        result = prepare(int(rows_n), int(select), how, Path(folder))
    else:
        result = curate(Path(folder))
    print(json.dumps(result, default=float))
