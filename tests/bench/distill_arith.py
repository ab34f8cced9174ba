"""Distillation effect, measured where it can show (issue 30): arithmetic the bundled teacher can partly do.

The canonical benchmark of specs/results.md from issue 30 on (tests/bench/distill_effect.py is the earlier GSM8K
one). Teacher: the bundled SmolLM2-135M-Instruct (vLLM in-process, `datagen run`). Student: its truncated copy
(`init: truncate`, the default: 15 of 30 layers, the first and the last kept), healed once (`train.heal`: CE on 500
GSM8K solutions, specs/data, cached) so that every arm starts from the same working student. Task: seeded
arithmetic with exact answers (tests/bench/arithmetic.py) at the level `pilot` picks (the teacher passes 30-60%).

Pieces, each cached under --cache (a re-run does only what is missing; results are JSON files under results/):

  pilot    the teacher's pass rate at T = 1 on --pilot-n problems per level of --levels; picks --level
  pool     the splits, fixed before any selection and disjoint by question text (--test 500 test problems,
           --calib calibration problems, --held problems whose teacher samples form the held-out teacher set
           shared by all arms, --pool-problems problems for the training pool), then `datagen run`: the pool (n = 2
           samples each at T = 1, top-10 logprobs, so CE and KD targets agree), the held-out set (T = 1, top-10)
           and the teacher's greedy answers to the test problems (its own accuracy)
  base     the teacher, the truncated student and the healed student, scored as every arm is
  arms     --arms (default all) x --seeds: `datagen train` (through datagen.api.train), then the score of
           tests/bench/distill_eval.py; one result per arm and seed
  report   the tables: teacher pass rates, per arm accuracy (mean, 95% t interval over seeds, per seed), gold NLL
           at the fitted temperature, training tokens; each planned comparison's per-seed differences, mean and 95%
           interval, McNemar's exact p per seed and pooled, the paired t p, Holm over the planned comparisons, and
           the minimum detectable effect at 80% power

Arms (N = --n training rows each; a seed draws the random rows and the training order):
  random    N teacher samples drawn uniformly from the pool (`select` by one group per row), SFT; also "sft"
  curated   the pool through `truncated` + `verify_math` (against the gold answer) + exact dedup of the question +
            s1 selection (difficulty by solution length, k-center diversity of the question), N rows, SFT
  kd        random's rows, KD alpha 0.5 at T 1 (forward KL on the top-10)
  hidden    random's rows, KD as `kd` + the hidden-state term (cosine, weight 1, layers auto, teacher's final norm)
  onpolicy  random's questions, `objective: onpolicy` (2 rounds of 1 epoch: the same optimiser steps as SFT's 2
            epochs; the full model scores the student's samples, reverse KL with the tail class)
  gold      random's questions with their gold solutions (a source with prompt/completion columns): the ceiling
  shuffled  random's rows with the teacher's answers shuffled among the questions: must hurt
Planned comparisons (Holm over all six): curated - random, kd - random, hidden - kd, onpolicy - random,
gold - random, shuffled - random.

The pilot, measured (2026-12, alone on the 2-core machine, `pilot --pilot-n 100`, one sample per problem, the plain
system prompt; answers up to 128 tokens). At T = 1: d1o2p 35% (but only 100 distinct problems), d1o2 22% (200), d1o3
12% (4,000), d2o2p 4%, d2o2 5%, d2o3 1%, word problems wd1o2p 6%, wd1o2 6%, wd1o3p 1%, wd2o2p 0%; a quarter to three
quarters of the answers run past 128 tokens. At T = 0.7: d1o3 7%, d2r1o2p 8%, d3r1o2p 7%, d2o2p 6%, d1o2 35%. At
T = 0.3: d1o3 11%, d2r1o2p 15%, d3r1o2p 5%, d2o2p 11%. With a worked example (`--example`), d1o3: 8 of 80 at T = 1.
So no level with enough distinct problems reaches 30%: this 135M model adds two one-digit numbers about a third of
the time and little else. specs/results.md runs d1o3 (`--level d1o3`), where the teacher's 2,000 pool samples at
T = 1 are 5.4% right (the pilot's 12% was 100 problems), which leaves 82 distinct pool problems with a verified,
untruncated answer: hence `--pool-problems 1000 --n 80` there, so that the curated arm trains on as many rows as
the others.

Commands for the whole experiment (each piece prints its own estimate from ESTIMATE when it starts):

  B="python tests/bench/distill_arith.py"; C="--cache /work/arith"
  $B pilot $C                           # about 3 min (500 answers); add --temperature 0.7 for a second table
  $B pool $C --level LEVEL              # about 7 min: 1,200 pool + 100 held-out + 500 greedy test answers
  $B base $C --level LEVEL              # about 18 min: the heal (60 steps, once) and three scorings
  $B arms $C --level LEVEL --seeds 1,2  # about 36 min per seed for the 7 arms (30 at --n 80); --arms picks some
  $B arms $C --level LEVEL --seeds 3,4
  $B report $C
TIME_NOTE
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# this folder holds a curation.py benchmark that would shadow the `curation` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from tests.bench import arithmetic as ar  # noqa: E402

TIME_NOTE = """All of it, by ESTIMATE: about 3 hours alone on 2 cores (the arms 2.6 h: a run is about 45 s of curation, loading and
saving, 2 min of training (32 steps), 2 min of scoring (vLLM start, 500 greedy answers, the gold NLL); `hidden` adds
its teacher's forward pass, `onpolicy` its sampling and scoring, about 4 min)."""
ARMS = ["random", "curated", "kd", "hidden", "onpolicy", "gold", "shuffled"]
PLANNED = [("curated", "random"), ("kd", "random"), ("hidden", "kd"), ("onpolicy", "random"), ("gold", "random"),
           ("shuffled", "random")]
SPLIT_SEED = 2030  # the splits never change with the arms' seeds
# seconds, measured on this project's 2-core machine (see each piece's printout); used only for the estimates
# (the smoke run: a tiny pool, base and four arms; 2 quiet cores): vLLM at 250-390 output tokens/s after a 20-30 s
# start, a heal step (8 GSM8K rows of up to 320 tokens, 15 layers) 10 s, a score of 40 test problems 25 s (mostly the
# engine start), `datagen curate` plus loading and saving about 40 s per run
ESTIMATE = {"engine": 30, "teacher_tok_s": 330, "step_s": 4, "heal_step_s": 10, "eval_s": 120, "overhead_s": 45,
            "onpolicy_s": 240}


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.replace("TIME_NOTE", TIME_NOTE),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("piece", choices=["pilot", "pool", "base", "arms", "report"])
    p.add_argument("--cache", type=Path, default=None, help="default: <datagen cache>/bench/distill_arith")
    p.add_argument("--levels", default="d1o3,d2r1o2p,d3r1o2p,d2r1o2,d2o2p", help="pilot: the levels to try")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="the teacher's sampling temperature for the pool, the held-out set and the pilot; below 1 the "
                        "soft labels are the distribution sampled from (logprobs_mode: processed), so CE and KD targets "
                        "still agree")
    p.add_argument("--pilot-n", type=int, default=100, help="pilot: problems per level")
    p.add_argument("--level", default=None, help="the task's level (default: the pilot's pick)")
    p.add_argument("--example", action=argparse.BooleanOptionalAction, default=False,
                   help="a worked problem of the level in the system prompt (teacher and student alike)")
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--calib", type=int, default=200)
    p.add_argument("--held", type=int, default=100)
    p.add_argument("--pool-problems", type=int, default=600)
    p.add_argument("--samples", type=int, default=2, help="teacher samples per pool problem")
    p.add_argument("--max-new-tokens", type=int, default=128, help="teacher and student answers")
    p.add_argument("--n", type=int, default=128, help="training rows per arm")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--heal-steps", type=int, default=60)
    p.add_argument("--heal-lr", type=float, default=1e-4)
    p.add_argument("--eval-engine", choices=["vllm", "transformers"], default="vllm", help="greedy answers")
    p.add_argument("--gen-batch", type=int, default=50, help="greedy answers per generate call (transformers)")
    p.add_argument("--fresh", action="store_true", help="redo the cached results of this piece")
    return p.parse_args(argv)


def cache_of(args) -> Path:
    from datagen.bundled import cache_dir

    return (args.cache or cache_dir() / "bench" / "distill_arith").resolve()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not path.exists() or path.read_text() != text:  # unchanged files keep the plan's source identity
        path.write_text(text)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def estimate(what: str, seconds: float) -> None:
    print(f"{what}: expected about {seconds / 60:.0f} min on 2 quiet cores (ESTIMATE in {Path(__file__).name})",
          flush=True)


def datagen(*argv: str) -> None:
    from datagen.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        if exc.code not in (0, None):
            sys.exit(f"`datagen {' '.join(argv)}` failed with exit code {exc.code}")


def teacher(args, temperature: float = 1.0) -> dict:
    return {"backend": "vllm", "model": "bundled:smollm2-135m-instruct",
            "sampling": {"temperature": temperature, "top_p": 1.0, "max_tokens": args.max_new_tokens},
            "engine": {"enforce_eager": True, "max_model_len": 1024, "kv_cache_gb": 1, "dtype": "float32"}}


def label_step(name: str, source: str, n: int, temperature: float, logprobs: int | None,
               system: str = "{{ system }}") -> dict:
    step = {"name": name, "strategy": "label", "teacher": "big", "input": source, "system": system,
            "prompt": "{{ question }}", "n": n, "output": "solution", "sampling": {"temperature": temperature}}
    if logprobs and temperature != 1.0:  # the soft labels of the distribution the text was sampled from
        step["logprobs_mode"] = "processed"
    return step | ({"logprobs": logprobs} if logprobs else {})


def write_spec(path: Path, spec: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def step_rows(spec: Path, step: str) -> list[dict]:
    """A step's rows with their request's finish reason and completion tokens."""
    import duckdb

    from datagen.spec.load import load_spec

    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        cur = con.execute(f"SELECT s.*, r.completion_tokens AS _tokens FROM {step} s JOIN outputs o ON o._id = s._id "
                          "JOIN requests r ON r.key = o.key ORDER BY s._id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def pass_rate(rows: list[dict]) -> dict:
    right = sum(ar.correct(r["solution"] or "", int(r["result"])) for r in rows)
    tokens = [r["_tokens"] or 0 for r in rows]
    return {"rows": len(rows), "right": right, "rate": right / max(len(rows), 1),
            "truncated": sum(1 for r in rows if r.get("_finish_reason") == "length"),
            "mean_tokens": sum(tokens) / max(len(tokens), 1)}


# --- pilot ------------------------------------------------------------------------------------------------------


def pilot(args, cache: Path) -> dict:
    levels = [ar.parse_level(x) for x in args.levels.split(",")]
    folder = cache / "pilot"
    folder.mkdir(parents=True, exist_ok=True)
    estimate("pilot", ESTIMATE["engine"] + len(levels) * args.pilot_n * 60 / ESTIMATE["teacher_tok_s"])
    problems = [{**p, "system": ar.system_prompt(lv, args.example)} for lv in levels
                for p in ar.generate("pilot", lv, args.pilot_n)]
    write_jsonl(folder / "problems.jsonl", problems)
    spec = write_spec(folder / "pilot.yaml", {
        "name": "pilot", "seed": 7, "teachers": {"big": teacher(args)},
        "sources": {"problems": {"path": "problems.jsonl"}},
        "steps": [label_step("solve", "problems", 1, args.temperature, None)]})
    started = time.perf_counter()
    datagen("run", str(spec))
    rows = step_rows(spec, "solve")
    path = pilot_path(folder, args)
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    by_level = earlier.get("levels", {})  # levels of earlier runs at this temperature are kept
    by_level |= {lv.name: pass_rate([r for r in rows if r["level"] == lv.name]) | {"capacity": lv.capacity()}
                 for lv in levels}
    needed = 2 * (args.test + args.calib + args.held + args.pool_problems)  # distinct problems, with room to draw
    inside = [n for n, r in by_level.items() if 0.3 <= r["rate"] <= 0.6 and r["capacity"] >= needed]
    pick = min(inside, key=lambda n: abs(by_level[n]["rate"] - 0.45)) if inside else None
    result = {"levels": by_level, "pick": pick, "temperature": args.temperature, "example": args.example,
              "needed": needed,
              "seconds": time.perf_counter() - started, "command": " ".join(sys.argv)}
    save_json(path, result)
    print(f"\n| level | distinct problems | problems | teacher right at T={args.temperature:g} | rate | truncated | "
          "mean tokens |\n|---|---|---|---|---|---|---|")
    for name, r in by_level.items():
        print(f"| {name} | {r['capacity']:,} | {r['rows']} | {r['right']} | {r['rate']:.1%} | {r['truncated']} | "
              f"{r['mean_tokens']:.0f} |")
    print(f"pick (30-60%, nearest 45%, at least {needed:,} distinct problems): {pick}; {result['seconds']:.0f} s",
          flush=True)
    return result


def pilot_path(folder: Path, args) -> Path:
    """One file per temperature and prompt, so a pilot at another temperature keeps the earlier table."""
    name = "pilot" + ("-example" if args.example else "") + ("" if args.temperature == 1.0 else f"-T{args.temperature:g}")
    return folder / f"{name}.json"


def level_of(args, cache: Path) -> ar.Level:
    if args.level:
        return ar.parse_level(args.level)
    path = pilot_path(cache / "pilot", args)
    pick = json.loads(path.read_text())["pick"] if path.is_file() else None
    if not pick:
        sys.exit("no --level and no pilot pick: run the `pilot` piece first (or pass --level d2o3)")
    return ar.parse_level(pick)


# --- pool -------------------------------------------------------------------------------------------------------


def pool_spec(args, cache: Path) -> Path:
    """The splits (written once; a different level or size is refused) and the pool spec."""
    level = level_of(args, cache)
    folder = cache / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"test": args.test, "calib": args.calib, "held": args.held, "pool": args.pool_problems}
    meta = {"level": level.name, "seed": SPLIT_SEED, "sizes": sizes, "system": ar.system_prompt(level, args.example),
            "temperature": args.temperature}
    marker = folder / "splits.json"
    if marker.is_file() and json.loads(marker.read_text()) != meta:
        sys.exit(f"{folder} holds splits of {marker.read_text().strip()}, not {meta}; use another --cache")
    parts = ar.splits(SPLIT_SEED, level, sizes)
    for name, rows in parts.items():
        write_jsonl(folder / f"{name}.jsonl", [{**r, "system": meta["system"]} for r in rows])
    heal = read_jsonl(ROOT / "specs" / "data" / "gsm8k_train_500.jsonl")
    write_jsonl(folder / "heal.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in heal])
    save_json(marker, meta)
    return write_spec(folder / "pool.yaml", base_spec(args))


def base_spec(args) -> dict:
    return {"name": "distill_arith", "seed": 7, "store": "pool.duckdb", "teachers": {"big": teacher(args)},
            "sources": {name: {"path": f"{name}.jsonl"} for name in ("pool", "held", "test", "calib", "heal")},
            "steps": [label_step("solve", "pool", args.samples, args.temperature, 10),
                      label_step("held_out", "held", 1, args.temperature, 10),
                      label_step("teacher_test", "test", 1, 0.0, None)]}


def system_of(cache: Path) -> str:
    """The system prompt the splits were made with (teacher and student see the same)."""
    return json.loads((cache / "pool" / "splits.json").read_text())["system"]


def pool(args, cache: Path) -> dict:
    spec = pool_spec(args, cache)
    tokens = (args.pool_problems * args.samples + args.held + args.test) * 70
    estimate("pool", ESTIMATE["engine"] + tokens / ESTIMATE["teacher_tok_s"])
    started = time.perf_counter()
    datagen("run", str(spec))
    stats = {"pool": pass_rate(step_rows(spec, "solve")), "held_out": pass_rate(step_rows(spec, "held_out")),
             "teacher_test": pass_rate(step_rows(spec, "teacher_test")), "seconds": time.perf_counter() - started,
             "level": level_of(args, cache).name}
    save_json(cache / "results" / "pool.json", stats)
    for name, r in stats.items():
        if isinstance(r, dict):
            print(f"{name}: teacher right {r['right']}/{r['rows']} = {r['rate']:.1%}, {r['truncated']} truncated, "
                  f"{r['mean_tokens']:.0f} tokens per answer", flush=True)
    return stats


# --- scoring ----------------------------------------------------------------------------------------------------


def eval_data(args, cache: Path) -> tuple[dict, dict]:
    """What every score reads (distill_eval.evaluate), and its settings."""
    from datagen.api import plan as build_plan
    from datagen.spec.load import load_spec
    from sft.rows import load_logprobs, load_rows

    folder = cache / "pool"
    loaded = load_spec(folder / "pool.yaml")
    rows = load_rows(loaded, build_plan(loaded), "held_out", None)
    held = {"records": rows.train, "stored": load_logprobs(loaded, [r["row"]["_id"] for r in rows.train]), "k": 10}
    data = {"test": read_jsonl(folder / "test.jsonl"), "calib": read_jsonl(folder / "calib.jsonl"),
            "system": system_of(cache), "held": held}
    settings = {"max_new_tokens": args.max_new_tokens, "gen_batch": args.gen_batch, "max_length": args.max_length,
                "batch": args.batch, "engine": args.eval_engine}
    return data, settings


def score_folder(folder: Path, data: dict, settings: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.bench.distill_eval import evaluate

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return evaluate(model, tok, data, settings, folder)


def base(args, cache: Path) -> None:
    """The teacher, the truncated student and the healed student, scored as every arm is."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.bundled import resolve_model
    from sft.model import save_student, truncate_layers
    from tests.bench.distill_eval import evaluate

    estimate("base", 4 * ESTIMATE["eval_s"] + args.heal_steps * ESTIMATE["heal_step_s"])  # the teacher's: 2 evals
    data, settings = eval_data(args, cache)
    out = cache / "results"
    path = resolve_model("bundled:smollm2-135m-instruct")
    for name in ("teacher", "truncated"):
        if (out / f"{name}.json").is_file() and not args.fresh:
            continue
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        folder = path
        if name == "truncated":
            truncate_layers(model, None)
            folder = save_student(model, tok, cache / "truncated", {"init": "truncate"})
        save_json(out / f"{name}.json", {"arm": name, **evaluate(model, tok, data, settings, folder)})
        print(f"{name}: {summary(json.loads((out / f'{name}.json').read_text()))}", flush=True)
    if (out / "healed.json").is_file() and not args.fresh:
        return
    spec = arm_spec(args, cache, "random", 1)  # any arm's spec names the same heal
    folder = healed(spec)
    save_json(out / "healed.json", {"arm": "healed", "folder": str(folder), **score_folder(folder, data, settings)})
    print(f"healed: {summary(json.loads((out / 'healed.json').read_text()))}", flush=True)


def healed(spec: Path) -> Path:
    from datagen.api import plan as build_plan
    from datagen.spec.load import load_spec
    from sft.heal import healed_student
    from sft.train import sft_trainer, training_args

    loaded = load_spec(spec)
    return healed_student(loaded, build_plan(loaded), loaded.spec.train, lambda m: print(m, flush=True), sft_trainer,
                          training_args)


def summary(r: dict) -> str:
    return (f"accuracy {r['accuracy']:.3f}, gold NLL {r['gold_nll']:.3f} at T {r['temperature']:.2f} "
            f"({r['gold_nll_t1']:.3f} at 1), held NLL {r.get('held_nll', float('nan')):.3f}, "
            f"{r['eval_seconds']:.0f} s")


# --- arms -------------------------------------------------------------------------------------------------------


def curation(arm: str, n: int) -> dict:
    if arm == "curated":
        return {"input": "solve",
                "filters": [{"type": "truncated"},
                            {"type": "verify_math", "column": "solution", "reference": "answer"}],
                "dedup": [{"type": "exact", "column": "question"}],
                "select": {"n": n, "difficulty": {"column": "solution", "by": "length"},
                           "diversity": {"method": "kcenter", "column": "question"}}}
    # one group per row: s1's stratified sampling becomes a uniform random pick, seeded by the spec's seed
    return {"input": "solve", "select": {"n": n, "diversity": {"method": "cluster", "by_column": "_id"}}}


def train_block(args, arm: str, seed: int) -> dict:
    block = {"student": "bundled:smollm2-135m-instruct", "init": "truncate",
             "heal": {"input": "heal", "steps": args.heal_steps, "learning_rate": args.heal_lr,
                      "batch_size": args.batch},
             "objective": "sft", "epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch,
             "max_length": args.max_length, "input": "curated"}
    if arm in ("kd", "hidden"):
        block |= {"objective": "kd", "kd": {"alpha": 0.5, "temperature": 1.0, "divergence": "forward"}}
    if arm == "hidden":
        block["kd"]["hidden"] = {"weight": 1.0, "layers": "auto", "loss": "cosine", "norm": "final"}
    if arm in ("gold", "shuffled"):
        block |= {"input": f"{arm}_s{seed}", "system": "{{ system }}"}
    if arm == "onpolicy":  # 2 rounds of 1 epoch over N samples: the optimiser steps of SFT's 2 epochs over N rows
        block |= {"input": f"prompts_s{seed}", "system": "{{ system }}", "prompt": "{{ question }}",
                  "objective": "onpolicy", "epochs": args.epochs / 2,
                  "onpolicy": {"teacher": "scorer", "rounds": 2, "max_tokens": args.max_new_tokens, "logprobs": 10,
                               "samples": 1, "temperature": 1.0, "sample_with": "transformers"}}
    return block


def arm_spec(args, cache: Path, arm: str, seed: int) -> Path:
    folder = cache / "pool"
    spec = base_spec(args) | {"seed": seed, "curation": curation("curated" if arm == "curated" else "random", args.n),
                              "train": train_block(args, arm, seed)}
    if arm in ("gold", "shuffled", "onpolicy"):
        name = f"{'prompts' if arm == 'onpolicy' else arm}_s{seed}"
        spec["sources"] = spec["sources"] | {name: {"path": f"{name}.jsonl"}}
    if arm == "onpolicy":
        spec["teachers"] = spec["teachers"] | {"scorer": {"backend": "transformers",
                                                          "model": "bundled:smollm2-135m-instruct"}}
    return write_spec(folder / f"arm-{arm}-s{seed}.yaml", spec)


def curate(spec: Path) -> list[dict]:
    """`datagen curate`, then the selected rows."""
    import duckdb

    from datagen.spec.load import load_spec

    datagen("curate", str(spec))
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        cur = con.execute("SELECT * FROM curated ORDER BY _id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def seed_sources(args, cache: Path, seed: int, rows: list[dict]) -> None:
    """random's rows for this seed as the gold, shuffled and on-policy arms' sources."""
    folder = cache / "pool"
    system = system_of(cache)
    write_jsonl(folder / f"gold_s{seed}.jsonl", [{"prompt": r["question"], "completion": r["answer"],
                                                  "system": system} for r in rows])
    answers = [r["solution"] for r in rows]
    rng = random.Random(f"shuffle\0{seed}")
    order = list(range(len(rows)))
    while len(rows) > 1 and any(i == j for i, j in enumerate(order)):  # a derangement: no answer stays
        rng.shuffle(order)
    write_jsonl(folder / f"shuffled_s{seed}.jsonl",
                [{"prompt": r["question"], "completion": answers[j], "system": system} for r, j in zip(rows, order)])
    write_jsonl(folder / f"prompts_s{seed}.jsonl", [{"question": r["question"], "system": system} for r in rows])


def train_totals(result, spec: Path) -> tuple[int, float]:
    """(training tokens, training seconds); an on-policy run's are its rounds' records in train_runs."""
    if result.objective != "onpolicy":
        return result.train_tokens, result.train_seconds
    import duckdb

    from datagen.spec.load import load_spec

    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        tokens, seconds = con.execute("SELECT sum(train_tokens), sum(train_seconds) FROM train_runs WHERE "
                                      "parent_run = ? AND status = 'done'", [result.run_id]).fetchone()
    finally:
        con.close()
    return int(tokens or 0), float(seconds or 0.0)


def run_arm(args, cache: Path, arm: str, seed: int, data: dict, settings: dict) -> dict:
    from datagen.api import train

    spec = arm_spec(args, cache, arm, seed)
    selection = "curated" if arm == "curated" else "random"
    rows = curate(arm_spec(args, cache, selection, seed))
    if len(rows) < args.n:
        print(f"note: `{selection}` keeps {len(rows)} rows for seed {seed}, fewer than --n {args.n}: the {arm} arm "
              "trains on them (the report shows the rows; the comparison with random is then also one of size)",
              flush=True)
    if selection == "random":
        seed_sources(args, cache, seed, rows)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"arith-{arm}-") as tmp:
        out = Path(tmp) / "student"
        result = train(spec, out=out, log=lambda m: print(f"  {m}", flush=True))
        trained = time.perf_counter() - started
        scores = score_folder(out, data, settings)
    tokens, seconds = train_totals(result, spec)
    rec = {"arm": arm, "seed": seed, "rows": len(rows), "verified": sum(ar.correct(r["solution"] or "", int(r["result"]))
                                                                       for r in rows),
           "train_rows": result.train_rows, "steps": result.steps, "train_tokens": tokens,
           "train_seconds": seconds, "train_wall_seconds": trained, "run_seconds": time.perf_counter() - started,
           **scores}
    save_json(cache / "results" / f"{arm}-s{seed}.json", rec)
    print(f"{arm} seed {seed}: {summary(rec)}; {rec['rows']} rows ({rec['verified']} right), {tokens} training "
          f"tokens, {rec['run_seconds']:.0f} s in all", flush=True)
    return rec


def arms(args, cache: Path) -> None:
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        sys.exit(f"unknown --arms {unknown}; known: {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [(a, s) for s in seeds for a in names if args.fresh or not (cache / "results" / f"{a}-s{s}.json").is_file()]
    steps = args.n / args.batch * args.epochs
    per = {a: ESTIMATE["overhead_s"] + ESTIMATE["eval_s"] + steps * ESTIMATE["step_s"] * (2 if a == "hidden" else 1)
           + (ESTIMATE["onpolicy_s"] if a == "onpolicy" else 0) for a in ARMS}
    estimate(f"arms ({len(todo)} runs to do: {todo})", sum(per[a] for a, _ in todo))
    if not (cache / "results" / "pool.json").is_file():
        sys.exit("run the `pool` piece first")
    data, settings = eval_data(args, cache)
    for arm, seed in todo:
        run_arm(args, cache, arm, seed, data, settings)


def main() -> None:
    args = arguments()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache = cache_of(args)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"cache: {cache}", flush=True)
    if args.piece == "pilot":
        pilot(args, cache)
    elif args.piece == "pool":
        pool(args, cache)
    elif args.piece == "base":
        base(args, cache)
    elif args.piece == "arms":
        arms(args, cache)
    else:
        from tests.bench.distill_report import report

        report(cache, PLANNED, ARMS)


if __name__ == "__main__":
    main()
