"""Benchmark: semantic dedup and k-center selection at 100,000 rows, against a full-matrix baseline and semhash.

    .venv/bin/python tests/bench/curation.py --rows 100000 --baseline-rows 20000
    .venv/bin/python tests/bench/curation.py --levers --lever-rows 5000      (embedding levers: curation_levers.py)
    .venv/bin/python tests/bench/curation.py --rows 1000000 --stored-embeddings   (scale: curation_scale.py)

Rows are built from the project's real data (specs/data: GSM8K questions and worked answers, Self-Instruct tasks):
each base row joins 2 or 3 random sentences of that pool, with its numbers redrawn, and 5% more rows are planted
near-duplicates of random base rows (extra whitespace, changed case, one word replaced, punctuation dropped, a
prefix added), shuffled in. The datagen pipeline runs for real: a spec with the rows as a source, `run_curation`
into a DuckDB file, the bundled all-MiniLM-L6-v2 encoder. The embeddings are computed first as their own timed
stage (the store then holds them, as `datagen curate` would reuse them), so the dedup stage's time is dedup alone.

The baseline (an n-by-n similarity matrix, then the same greedy rule) and semhash (given the same encoder's vectors
and the same threshold) run in subprocesses, so each one's peak memory is its own. The MinHash stage is timed on the
same texts too, to show whether datasketch is a bottleneck (if it were, rensa would be the replacement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from curation_data import (ROOT, THRESHOLD, PeakRSS, build_rows, found_pairs, gb,  # noqa: E402,F401
                           max_rss)


# --- the datagen pipeline ----------------------------------------------------------------------------------------

SPEC = """\
name: bench
seed: 0
teachers:
  none: {{backend: openai, base_url: "http://127.0.0.1:9/v1", model: m}}
sources:
  rows: {{path: rows.jsonl}}
steps:
  - {{name: unused, strategy: label, teacher: none, input: rows, prompt: "{{{{ text }}}}"}}
curation:
  input: rows
  dedup:
    - {{type: semantic, column: text, threshold: {threshold}}}
  select: {{n: {n}, diversity: {{method: kcenter, column: text}}}}
"""


def run_pipeline(work: Path, rows: list[dict], pairs, select_n: int) -> dict:
    from datagen.embed.encode import embed, load_model
    from curation.run import run_curation
    from datagen.spec.load import load_spec
    from datagen.api import plan as build_plan
    from datagen.store.connection import open_store
    from datagen.store.views import sync_views

    with (work / "rows.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    (work / "spec.yaml").write_text(SPEC.format(threshold=THRESHOLD, n=select_n))
    out: dict = {}
    with PeakRSS() as m:
        loaded = load_spec(work / "spec.yaml")
        plan = build_plan(loaded)
        con = open_store(loaded.store_path)
        sync_views(con, plan.source_tables, plan.views)
    out["load rows into the store"] = (m.seconds, m.peak)
    with PeakRSS() as m:
        load_model("bundled:all-minilm-l6-v2")
    out["load the encoder"] = (m.seconds, m.peak)
    ids = [r[0] for r in con.execute("SELECT _id FROM rows").fetchall()]
    with PeakRSS() as m:
        embed(con, [r["text"] for r in rows], ids, "bundled:all-minilm-l6-v2")
    out["embed (stored for reuse)"] = (m.seconds, m.peak)
    with PeakRSS() as m:
        funnel = run_curation(con, loaded, plan, log=lambda s: None)
    stage = {f["stage"]: f for f in funnel}
    out["dedup:semantic"] = (stage["dedup:semantic"]["seconds"], m.peak)
    out[f"select (kcenter to {select_n})"] = (stage["select"]["seconds"], m.peak)
    out["run_curation total (incl. reading rows, writing decisions)"] = (m.seconds, m.peak)
    order = {rid: i for i, rid in enumerate(ids)}
    dropped = {order[r] for (r,) in con.execute(
        "SELECT row_id FROM decisions WHERE stage = 'dedup:semantic' AND NOT kept").fetchall()}
    con.close()
    return {"stages": out, "dropped": dropped, "found": found_pairs(dropped, pairs), "peak": max_rss(),
            "store": str(loaded.store_path)}


def time_minhash(rows: list[dict]) -> tuple[float, int, int]:
    from curation.dedup.minhash import minhash_dedup

    with PeakRSS() as m:
        result = minhash_dedup([r["text"] for r in rows], list(range(len(rows))), threshold=0.8)
    return m.seconds, m.peak, sum(1 for k, _, _ in result if not k)


def time_ivf(store: str) -> tuple[float, float]:
    """Above `exact_below` rows semantic dedup uses an IVF index; force it here to see its speed and agreement."""
    from curation.dedup.semantic import semantic_dedup

    vectors, _ = load_vectors(store, None)
    exact = semantic_dedup(vectors, list(range(len(vectors))), THRESHOLD, exact_below=len(vectors))
    start = time.monotonic()
    ivf = semantic_dedup(vectors, list(range(len(vectors))), THRESHOLD, exact_below=0)
    seconds = time.monotonic() - start
    return seconds, sum(1 for a, b in zip(exact, ivf) if a[0] == b[0]) / len(vectors)


# --- the comparisons, each in its own process ------------------------------------------------------------------

def load_vectors(store: str, limit: int | None) -> tuple[np.ndarray, list[str]]:
    from datagen.embed.encode import embed
    from datagen.store.connection import open_store

    con = open_store(Path(store))
    rows = con.execute("SELECT _id, text FROM rows" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
    vectors = embed(con, [t for _, t in rows], [i for i, _ in rows], "bundled:all-minilm-l6-v2")  # all cached
    con.close()
    return vectors, [t for _, t in rows]


def full_matrix(store: str, m: int) -> dict:
    """The plain approach: an m-by-m similarity matrix, then the same greedy keep-first rule."""
    vectors, _ = load_vectors(store, m)
    with PeakRSS() as meter:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, 0)
        kept = np.zeros(m, dtype=bool)
        dropped = []
        for i in range(m):
            if (sims[i][kept] >= THRESHOLD).any():
                dropped.append(i)
            else:
                kept[i] = True
    from curation.dedup.semantic import semantic_dedup

    start = time.monotonic()
    ours = semantic_dedup(vectors, list(range(m)), THRESHOLD)
    ours_seconds = time.monotonic() - start
    same = sum(1 for i, (k, _, _) in enumerate(ours) if k == bool(kept[i]))
    return {"seconds": meter.seconds, "peak": meter.peak, "dropped": sorted(dropped), "agree": same / m,
            "ours_seconds": ours_seconds}


def semhash_run(store: str) -> dict:
    from semhash import SemHash

    from datagen.embed.encode import load_model

    vectors, texts = load_vectors(store, None)
    model = load_model("bundled:all-minilm-l6-v2")

    class Encoder:  # the same encoder datagen uses, in the shape semhash asks for
        def encode(self, sentences, **kwargs):
            return model.encode(list(sentences), normalize_embeddings=True, convert_to_numpy=True)

    records = [{"i": str(i), "text": t} for i, t in enumerate(texts)]
    with PeakRSS() as meter:
        sh = SemHash.from_embeddings(vectors, records, model=Encoder(), columns=["text"])
        result = sh.self_deduplicate(threshold=THRESHOLD)
    dropped = sorted(int(d.record["i"]) for d in result.filtered)
    return {"seconds": meter.seconds, "peak": meter.peak, "dropped": dropped}


def child(kind: str, store: str, m: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", kind, "--store", store, "--baseline-rows", str(m)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- main ------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--select", type=int, help="rows to select (default 1,000; 10,000 with --stored-embeddings)")
    ap.add_argument("--baseline-rows", type=int, default=20_000, help="size of the full-matrix baseline")
    ap.add_argument("--no-semhash", action="store_true")
    ap.add_argument("--child", choices=["baseline", "semhash"])
    ap.add_argument("--store")
    ap.add_argument("--levers", action="store_true", help="compare embedding levers against torch MiniLM")
    ap.add_argument("--lever-rows", type=int, default=5000)
    ap.add_argument("--stored-embeddings", action="store_true",
                    help="curation at scale with (synthesised) embeddings already stored: see curation_scale.py")
    ap.add_argument("--sizes", help="with --stored-embeddings: comma-separated row counts (default 100k, 300k, "
                                    "--rows)")
    ap.add_argument("--select-method", choices=["kcenter", "cluster"], default="kcenter")
    args = ap.parse_args()
    if args.stored_embeddings:
        from curation_scale import run as run_scale

        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else sorted(
            {min(100_000, args.rows), min(300_000, args.rows), args.rows})
        run_scale(sizes, args.select or 10_000, args.select_method)
        return
    if args.levers:
        from curation_levers import run

        run(args.lever_rows)
        return
    args.select = args.select or 1000
    if args.child:
        out = full_matrix(args.store, args.baseline_rows) if args.child == "baseline" else semhash_run(args.store)
        print(json.dumps(out))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows, pairs = build_rows(args.rows)
    print(f"{len(rows)} rows ({len(pairs)} planted near-duplicates), threshold {THRESHOLD}, select {args.select}")
    with tempfile.TemporaryDirectory(prefix="datagen-bench-") as tmp:
        ours = run_pipeline(Path(tmp), rows, pairs, args.select)
        print("\ndatagen pipeline (one process):")
        for name, (sec, peak) in ours["stages"].items():
            print(f"  {name:58s} {sec:8.1f} s   peak RSS so far {gb(peak)}")
        embed_s = ours["stages"]["embed (stored for reuse)"][0]
        dedup_s = ours["stages"]["dedup:semantic"][0]
        print(f"  peak memory of the whole process: {gb(ours['peak'])}")
        print(f"  dedup time / embedding time: {dedup_s / embed_s:.2f}")
        print(f"  rows dropped as duplicates: {len(ours['dropped'])}; planted pairs found: {ours['found']} of "
              f"{len(pairs)}")
        ivf_s, ivf_agree = time_ivf(ours["store"])
        print(f"  (the same dedup forced onto the clustered IVF index: {ivf_s:.1f} s, same verdict as the exact "
              f"search on {ivf_agree:.2%} of rows)")
        mh_s, mh_peak, mh_dropped = time_minhash(rows)
        print(f"  (minhash, 128 perm, threshold 0.8, same texts: {mh_s:.1f} s, {mh_dropped} dropped)")

        m = min(args.baseline_rows, len(rows))
        base = child("baseline", ours["store"], m)
        at_full = f"; at {len(rows)} rows it would be {gb(4 * len(rows) ** 2)}" if m < len(rows) else ""
        print(f"\nfull-matrix baseline on the first {m} rows: {base['seconds']:.1f} s, peak RSS {gb(base['peak'])} "
              f"(the {m}x{m} float32 matrix alone is {gb(4 * m * m)}{at_full}); dropped {len(base['dropped'])}; "
              f"datagen's dedup on the same rows: {base['ours_seconds']:.1f} s, same verdict on "
              f"{base['agree']:.2%} of rows")
        if not args.no_semhash:
            sh = child("semhash", ours["store"], m)
            sh_found = found_pairs(set(sh["dropped"]), pairs)
            both = len(set(sh["dropped"]) & ours["dropped"])
            print(f"\nsemhash 0.5 (same vectors, same threshold, usearch backend): {sh['seconds']:.1f} s, peak RSS "
                  f"{gb(sh['peak'])}; dropped {len(sh['dropped'])}; planted pairs found {sh_found} of {len(pairs)}; "
                  f"dropped by both: {both}")
            print(f"datagen found {ours['found'] - sh_found:+d} planted pairs relative to semhash")


if __name__ == "__main__":
    main()
