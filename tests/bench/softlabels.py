"""Soft labels: what they cost on disk, how fast the teacher scores given text, how fast KD reads them back.

Run (each part alone, or `all`; nothing else heavy on the machine):
    .venv/bin/python tests/bench/softlabels.py bytes [--rows 1000] [--data PATH]
    .venv/bin/python tests/bench/softlabels.py scoring [--rows 200]
    .venv/bin/python tests/bench/softlabels.py loading [--rows 1000]
    .venv/bin/python tests/bench/softlabels.py store [--rows 1000] [--k 20]

1. bytes: real top-k of the bundled model (a transformers forward pass over GSM8K train solutions after their
   questions) written in the old layout (one `token_logprobs` row per token: strings, int64 and float64 arrays,
   migration 001) and in the compact one (`soft_labels`, datagen/store/soft_labels.py), each in a fresh DuckDB
   file: bytes per token at k = 5, 20, 64, and the ratio old / new; with the KD loss (forward, alpha 0; and with
   the tail) of a truncated student on the decoded codes against the floats.
2. scoring: the same prompts and solutions on one in-process vLLM engine, scored by raw `LLM.generate` with
   `prompt_logprobs` (the baseline) and by datagen's vLLM teacher (GenRequest.continuation, what `strategy: score`
   sends): scored tokens per second and the ratio.
3. loading: KD's data path, stored soft labels -> per-row arrays -> the collator's tensors, for the old per-token
   layout (its reader as it was: one SQL row per token, Python dicts) and the compact one: tokens per second.
4. store: the issue's end-to-end case: `datagen run` of a score step (the bundled teacher on in-process vLLM, top-k)
   over N human GSM8K solutions, then: every stored text spelled back by its tokens, the whole store's bytes per
   scored token, and `datagen train` (kd, a few steps) on the scored rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "gsm8k_train.jsonl"
K_MAX = 64


def problems(path: Path, rows: int) -> list[dict]:
    out = []
    with path.open() as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) == rows:
                break
    return out


def real_topk(rows: list[dict], k: int = K_MAX):
    """(per row: TokenLogprobs list at k) from the bundled model, one forward pass per row (transformers)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.bundled import resolve_model
    from datagen.teachers.base import TokenLogprobs
    from datagen.teachers.scoring import token_strings

    path = resolve_model("bundled:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    vocab = [tok.decode([i]) for i in range(len(tok))]  # each id's string, as a server's top_tokens hold them
    out = []
    for r in rows:
        head = tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        ids = tok(r["answer"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([head + ids])).logits[0, len(head) - 1:-1].float().log_softmax(-1).double()
        top_lp, top_ids = lp.topk(k, -1)
        chosen = lp.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1).tolist()
        strings = token_strings(tok, ids, r["answer"])
        out.append([TokenLogprobs(s, t, c, [vocab[i] for i in ti], ti, tv)
                    for s, t, c, ti, tv in zip(strings, ids, chosen, top_ids.tolist(), top_lp.tolist())])
    return out, tok


def old_layout(con, rows: list[list], k: int) -> None:
    """The per-token table as migration 001 made it, filled as writes.py filled it before the compact form."""
    import pyarrow as pa

    con.execute("CREATE TABLE token_logprobs (row_id VARCHAR NOT NULL, position INTEGER NOT NULL, token VARCHAR, "
                "token_id BIGINT, logprob DOUBLE, top_tokens VARCHAR[], top_ids BIGINT[], top_logprobs DOUBLE[])")
    batch = []
    for n, positions in enumerate(rows):
        for pos, t in enumerate(positions):
            batch.append({"row_id": f"{n:020x}", "position": pos, "token": t.token, "token_id": t.token_id,
                          "logprob": t.logprob, "top_tokens": t.top_tokens[:k], "top_ids": t.top_ids[:k],
                          "top_logprobs": t.top_logprobs[:k]})
    con.register("b", pa.Table.from_pylist(batch))
    con.execute("INSERT INTO token_logprobs SELECT * FROM b")
    con.unregister("b")


def new_layout(con, rows: list[list], k: int) -> None:
    import pyarrow as pa

    from datagen.store import soft_labels
    from datagen.teachers.base import TokenLogprobs

    soft_labels.create(con)
    encoded = [soft_labels.encode(f"{n:020x}", [TokenLogprobs(t.token, t.token_id, t.logprob, t.top_tokens[:k],
                                                               t.top_ids[:k], t.top_logprobs[:k]) for t in positions])
               for n, positions in enumerate(rows)]
    con.register("b", pa.Table.from_pylist(encoded, schema=soft_labels.arrow_schema()))
    con.execute("INSERT INTO soft_labels SELECT * FROM b")
    con.unregister("b")


def file_bytes(fill, rows, k: int, folder: Path, name: str) -> int:
    import duckdb

    path = folder / f"{name}-{k}.duckdb"
    con = duckdb.connect(str(path))
    fill(con, rows, k)
    con.execute("CHECKPOINT")
    con.close()
    return path.stat().st_size


def kd_agreement(rows: list[list], k: int, tok) -> list[str]:
    """KD's D (alpha 0, T 1) of a truncated student on the codes against the floats, every divergence and tail."""
    import torch
    from transformers import AutoModelForCausalLM

    from datagen.bundled import resolve_model
    from datagen.store import soft_labels
    from datagen.teachers.base import TokenLogprobs
    from sft.kd import kd_loss
    from sft.model import truncate_layers

    model = AutoModelForCausalLM.from_pretrained(resolve_model("bundled:smollm2-135m-instruct"),
                                                 dtype=torch.float32).eval()
    truncate_layers(model, None)
    exact_ids, exact_lps, exact_rest, coded_ids, coded_lps, coded_rest, logits = [], [], [], [], [], [], []
    for positions in rows[:60]:
        ids = [t.token_id for t in positions]
        with torch.no_grad():
            logits.append(model(torch.tensor([ids]), use_cache=False).logits[0].float())
        exact_ids.append(torch.tensor([t.top_ids[:k] for t in positions]))
        exact_lps.append(torch.tensor([t.top_logprobs[:k] for t in positions], dtype=torch.float64))
        exact_rest.append(torch.log1p(-exact_lps[-1].exp().sum(-1)))
        labels = soft_labels.decode(soft_labels.encode("r", [TokenLogprobs(t.token, t.token_id, t.logprob,
                                                                           t.top_tokens[:k], t.top_ids[:k],
                                                                           t.top_logprobs[:k]) for t in positions]))
        coded_ids.append(torch.as_tensor(labels.top_ids, dtype=torch.long))
        coded_lps.append(torch.as_tensor(labels.top_logprobs))
        coded_rest.append(torch.as_tensor(labels.rest))
    out = []
    for divergence in ("forward", "reverse"):
        for tail in (False, True):
            a = b = 0.0
            for lg, ei, el, er, ci, cl, cr in zip(logits, exact_ids, exact_lps, exact_rest, coded_ids, coded_lps,
                                                  coded_rest):
                # position t's teacher data belongs with the token at t; logits at t - 1 predict it
                pad = lambda x, f: torch.cat([torch.full((1, *x.shape[1:]), f, dtype=x.dtype), x])[None]  # noqa: E731
                hard = torch.full((1, len(lg) + 1), 0)
                lgp = torch.cat([lg[:1], lg])[None]
                a += float(kd_loss(lgp, hard, pad(ei, -1), pad(el.float(), 0.0), 0.0, 1.0, divergence, tail,
                                   pad(er.float(), float("nan"))).kd)
                b += float(kd_loss(lgp, hard, pad(ci, -1), pad(cl, 0.0), 0.0, 1.0, divergence, tail,
                                   pad(cr, float("nan"))).kd)
            out.append(f"{divergence}{' + tail' if tail else ''}: floats {a / 60:.5f}, codes {b / 60:.5f}, relative "
                       f"difference {abs(b - a) / abs(a):.2e}")
    return out


def bench_bytes(args) -> None:
    started = time.perf_counter()
    rows, tok = real_topk(problems(args.data, args.rows))
    tokens = sum(len(r) for r in rows)
    print(f"{args.rows} GSM8K solutions, {tokens:,} tokens, top-{K_MAX} of the bundled model "
          f"({time.perf_counter() - started:.0f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'k':>4} {'old bytes/token':>16} {'new bytes/token':>16} {'old / new':>10}")
        for k in (5, 20, 64):
            old = file_bytes(old_layout, rows, k, Path(tmp), "old") / tokens
            new = file_bytes(new_layout, rows, k, Path(tmp), "new") / tokens
            print(f"{k:>4} {old:>16.1f} {new:>16.1f} {old / new:>9.2f}x")
    print("KD term on the compact codes against the floats (k = 20, 60 rows, a truncated student):")
    for line in kd_agreement(rows, 20, tok):
        print("  " + line)


def bench_scoring(args) -> None:
    """Raw vLLM prompt_logprobs against datagen's teacher, on one engine."""
    from vllm import SamplingParams

    from datagen.bundled import resolve_model
    from datagen.teachers.base import GenOptions, GenRequest, Sampling
    from datagen.teachers.scoring import continuation_ids
    from datagen.teachers.vllm_teacher import VLLMTeacher

    rows = problems(args.data, args.rows)
    teacher = VLLMTeacher("t", resolve_model("bundled:smollm2-135m-instruct"),
                          {"max_model_len": 1024, "kv_cache_gb": 1, "enforce_eager": True})
    llm = teacher._start()
    tok = llm.get_tokenizer()
    prompts, scored = [], 0
    for r in rows:
        head = tok.apply_chat_template([{"role": "user", "content": r["question"]}], add_generation_prompt=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        ids = continuation_ids(tok, r["answer"])
        prompts.append({"prompt_token_ids": head + ids})
        scored += len(ids)
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=20, detokenize=False)
    llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up
    results = {}
    for label in ("raw vLLM prompt_logprobs", "datagen score (vLLM teacher)", "raw vLLM (again)"):
        start = time.perf_counter()
        if label.startswith("raw"):
            llm.generate(prompts, params, use_tqdm=False)
        else:
            requests = [GenRequest([{"role": "user", "content": r["question"]}], [f"k{i}"], [0], r["answer"])
                        for i, r in enumerate(rows)]
            for _ in teacher.stream(requests, GenOptions(Sampling(), logprobs=20)):
                pass
        results[label] = scored / (time.perf_counter() - start)
    teacher.close()
    base = (results["raw vLLM prompt_logprobs"] + results["raw vLLM (again)"]) / 2
    print(f"{len(rows)} solutions, {scored:,} scored tokens, top-20, one engine (enforce_eager, CPU):")
    for label, rate in results.items():
        print(f"  {label:<32} {rate:>8.0f} scored tokens/s  {rate / base:>5.2f}x of raw (mean of its two runs)")


def bench_loading(args) -> None:
    """Stored soft labels to the collator's tensors: the old per-token reader against the compact one."""
    import duckdb
    import numpy as np

    from datagen.store import soft_labels
    from sft.kd import Aligner, TeacherTargets, teacher_targets

    rows, tok = real_topk(problems(args.data, args.rows), 20)
    ids_of = [f"{n:020x}" for n in range(len(rows))]
    tokens = sum(len(r) for r in rows)
    with tempfile.TemporaryDirectory() as tmp:
        old_path, new_path = Path(tmp) / "old.duckdb", Path(tmp) / "new.duckdb"
        for path, fill in ((old_path, old_layout), (new_path, new_layout)):
            con = duckdb.connect(str(path))
            fill(con, rows, 20)
            con.close()
        aligner = Aligner(tok)
        student = {rid: [t.token_id for t in positions] for rid, positions in zip(ids_of, rows)}

        def old_path_run():  # the reader and teacher_targets as they were before the compact form
            con = duckdb.connect(str(old_path), read_only=True)
            got = con.execute("SELECT row_id, token, token_id, top_tokens, top_ids, top_logprobs FROM token_logprobs "
                              "ORDER BY row_id, position").fetchall()
            con.close()
            stored: dict[str, list[dict]] = {}
            for rid, *values in got:
                stored.setdefault(rid, []).append(dict(zip(("token", "token_id", "top_tokens", "top_ids",
                                                            "top_logprobs"), values)))
            placed = 0
            for rid, positions in stored.items():
                tokens_, top_ids, top_lps = [], [], []
                for pos in positions:
                    tokens_.append(pos["token_id"])
                    top_ids.append([int(i) for i in pos["top_ids"]])
                    top_lps.append([float(x) for x in pos["top_logprobs"]])
                for _j, i in aligner(student[rid], tokens_):  # the old collator placed position by position
                    placed += bool(top_ids[i])
            return placed

        def new_path_run():
            con = duckdb.connect(str(new_path), read_only=True)
            stored = soft_labels.read(con, ids_of)
            con.close()
            placed = 0
            for rid, labels in stored.items():
                target: TeacherTargets = teacher_targets(labels, None)
                js, is_ = aligner.match(student[rid], target.tokens)
                placed += int((target.top_ids[is_] >= 0).any(-1).sum())
            return placed

        results = {}
        for label, fn in (("old per-token layout", old_path_run), ("compact layout", new_path_run)):
            best, placed = 0.0, 0
            for _ in range(3):  # the best of three, each path warmed by its first
                start = time.perf_counter()
                placed = fn()
                best = max(best, tokens / (time.perf_counter() - start))
            results[label] = (best, placed)
    base = results["old per-token layout"][0]
    print(f"KD data loading, {len(rows)} rows, {tokens:,} tokens at k = 20 (read, arrays, alignment; best of 3):")
    for label, (rate, placed) in results.items():
        print(f"  {label:<30} {rate:>10,.0f} tokens/s  {rate / base:>6.2f}x  ({placed:,} positions with teacher data)")
    assert len({p for _, p in results.values()}) == 1, "the two paths placed different positions"
    np.random.seed(0)


STORE_SPEC = """\
name: scored1000
teachers:
  small:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    engine: {{enforce_eager: true, max_model_len: 1024, kv_cache_gb: 1}}
sources:
  people: {{path: people.jsonl}}
steps:
  - name: read
    strategy: score
    teacher: small
    input: people
    prompt: "{{{{ question }}}}"
    response: answer
    logprobs: {k}
    output: solution
train:
  student: bundled:smollm2-135m-instruct
  init: truncate
  input: read
  objective: kd
  kd: {{alpha: 0.5}}
  max_steps: 4
  batch_size: 4
  max_length: 384
  eval: {{split: 0.02, verify: none}}
"""


def bench_store(args) -> None:
    import duckdb

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = problems(args.data, args.rows)
        (folder / "people.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = folder / "spec.yaml"
        spec.write_text(STORE_SPEC.format(k=args.k))
        cli = [sys.executable, "-m", "datagen.cli"]
        start = time.perf_counter()
        run = subprocess.run(cli + ["run", str(spec)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        seconds = time.perf_counter() - start
        store = folder / "runs" / "scored1000.duckdb"
        con = duckdb.connect(str(store), read_only=True)
        texts = dict(con.execute("SELECT _id, solution FROM read").fetchall())
        spelled = dict(con.execute("SELECT row_id, string_agg(token, '' ORDER BY position) FROM logprobs "
                                   "GROUP BY row_id").fetchall())
        tokens, k = con.execute("SELECT count(*), min(len(top_ids)) FROM logprobs").fetchall()[0]
        con.close()
        exact = sum(spelled.get(rid) == text for rid, text in texts.items())
        size = store.stat().st_size
        print(f"{len(rows)} human GSM8K solutions scored by the bundled teacher (in-process vLLM, top-{args.k}) in "
              f"{seconds:.0f} s (engine start included):")
        print(f"  rows {len(texts)}, spelled back exactly by their tokens {exact}, scored tokens {tokens:,}, "
              f"top-k per token at least {k}")
        print(f"  store {size:,} bytes: {size / tokens:.1f} bytes per scored token (everything: sources, requests, "
              "outputs, soft labels)")
        start = time.perf_counter()
        train = subprocess.run(cli + ["train", str(spec)], capture_output=True, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert train.returncode == 0, train.stderr[-3000:]
        line = next((x for x in (train.stdout + train.stderr).splitlines() if "teacher top-k matched" in x), "")
        print(f"  datagen train (kd, 4 steps) on them: exit 0 in {time.perf_counter() - start:.0f} s; {line.strip()}")
        if not math.isfinite(size):
            raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["bytes", "scoring", "loading", "store", "all"])
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    defaults = {"bytes": 1000, "scoring": 200, "loading": 1000, "store": 1000}
    for part in (["bytes", "scoring", "loading", "store"] if args.part == "all" else [args.part]):
        sub = argparse.Namespace(**{**vars(args), "rows": args.rows or defaults[part]})
        print(f"== {part}")
        {"bytes": bench_bytes, "scoring": bench_scoring, "loading": bench_loading, "store": bench_store}[part](sub)


if __name__ == "__main__":
    main()
