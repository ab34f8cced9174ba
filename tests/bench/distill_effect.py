"""Does curation, and do soft labels, give a better student for the same budget? (issue 17)

Superseded by tests/bench/distill_arith.py (issue 30: a task the teacher can partly do, a working student, paired
statistics), the canonical benchmark from then on. This one keeps the earlier truncation (every other layer, which
drops the last) so that the runs in specs/results.md's history reproduce.

Teacher: the bundled SmolLM2-135M-Instruct (30 layers). Student: its half-depth truncated copy (`init: truncate`,
every other layer: 15). Data: GSM8K. Metrics (specs/train.md): on the first --test GSM8K *test* questions, which the
student never sees (and which curation decontaminates against), the mean NLL per token of the human-written
reference solutions and the accuracy of greedy answers by verify_math; on held-out teacher rows, the KL to the
teacher's stored top-k and top-1 agreement. Mean and sample standard deviation over --seeds seeds.

One command per table; the teacher pool is generated once (through `datagen run` on tests/bench/distill_pool.yaml)
and cached, and each finished training run is cached too (`results.jsonl`), so an interrupted table resumes:

  python tests/bench/distill_effect.py pool       # the pool alone: --pool / 2 questions x n=2, top-10 logprobs
  python tests/bench/distill_effect.py curation   # curated vs random, same N, same training
  python tests/bench/distill_effect.py kd         # sft vs kd (alpha 1 control, alpha 0 / 0.5, T 1 / 2,
                                                  #  forward / reverse, tail class, + hidden-state term)

Arms of `curation`: `curated` = truncated + verify_math filters, decontamination against the test questions, MinHash
dedup of questions, s1 selection (difficulty by length, k-center diversity); `curated-noverify` = the same without
verify_math (the bundled teacher solves few GSM8K questions: 0 of 40 in the smoke run, so verification alone may
leave too few rows); `random` = decontamination, then a uniform random pick (stratified over `_id`, seeded). All
select the same number of rows: --n training rows plus --held held-out teacher rows, capped by what the curated arms
keep (printed); an arm keeping fewer than --min-rows is left out (printed). The `kd` table trains every config on
one selection per seed (--kd-data, default `random`).

Smoke run (run here, under nice, on 2 cores shared with other jobs), for each table:
  --cache /tmp/smoke --pool 40 --test 8 --n 16 --held 4 --seeds 1 --max-new-tokens 32 --min-rows 8
TIME_NOTE
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# this folder holds a curation.py benchmark that would shadow the `curation` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
POOL_SPEC = Path(__file__).resolve().parent / "distill_pool.yaml"
TIME_NOTE = """\
How long (measured here on 2 shared cores, then multiplied out): the smoke run above took 189 s for the pool (40
solutions, 7,631 tokens, with the vLLM start), 480 s for `curation` (2 arms) and 1,641 s for `kd` (11 configs, 4
steps each). A training step (8 rows of about 300 tokens, 15-layer student) took 7.5 s on quiet cores and up to 50 s
while other jobs shared them; greedy answers came at about 130 tokens/s (batch 8); the reference NLL of 16 answers
took 4.7 s. A full run (defaults: --pool 2000 --test 300 --n 256 --held 32 --epochs 2 --seeds 3) is then: the pool,
about 380k tokens, 20 to 60 min of vLLM; each training run 64 steps (about 8 min) plus two scorings (before and
after) of 300 greedy answers of up to 256 tokens (about 10 min each), so about 30 min; `curation` 6 to 9 runs, 3 to 5
h; `kd` 39 runs (13 configs), about 19 h; two to four times that on shared cores. Generation is most of it: --test
100 or --max-new-tokens 128 cut the scoring, --configs runs part of the kd table (finished runs are cached)."""
CURATED = ("curated", "curated-noverify")  # the second: the s1 recipe without verify_math, for weak teachers
KD_CONFIGS = {  # name -> train block changes
    "sft": {"objective": "sft"},
    "kd a1 (control)": {"objective": "kd", "kd": {"alpha": 1.0, "temperature": 1.0}},
    **{f"kd a{a:g} T{t:g} {short}": {"objective": "kd", "kd": {"alpha": a, "temperature": t, "divergence": d}}
       for d, short in (("forward", "fwd"), ("reverse", "rev")) for a in (0.5, 0.0) for t in (1.0, 2.0)},
    **{f"kd a{a:g} T1 fwd tail": {"objective": "kd", "kd": {"alpha": a, "temperature": 1.0, "divergence": "forward",
                                                             "tail": True}} for a in (0.0, 0.5)},
    "kd a0.5 T2 fwd + hidden": {"objective": "kd", "kd": {"alpha": 0.5, "temperature": 2.0, "divergence": "forward",
                                                          "hidden": {"weight": 1.0, "layers": "auto",
                                                                     "loss": "cosine"}}},
}
METRICS = [("reference_loss", "ref NLL"), ("reference_accuracy", "ref acc"), ("kd_kl", "KL to T"),
           ("kd_top1", "top-1 =T"), ("loss", "held-out NLL")]


def shared_data() -> Path:
    """The project's `../shared/data` (README: benchmarks may read the large files there by a path argument)."""
    for parent in ROOT.parents:
        if (parent / "shared" / "data" / "gsm8k_train.jsonl").is_file():
            return parent / "shared" / "data"
    return ROOT.parent / "shared" / "data"


def arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.replace("TIME_NOTE", TIME_NOTE),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["pool", "curation", "kd"])
    parser.add_argument("--cache", type=Path, default=None, help="default: <datagen cache>/bench/distill_effect")
    parser.add_argument("--data", type=Path, default=shared_data(), help="folder of gsm8k_train/test.jsonl")
    parser.add_argument("--pool", type=int, default=2000, help="teacher solutions (questions x n=2)")
    parser.add_argument("--test", type=int, default=300, help="GSM8K test questions scored")
    parser.add_argument("--n", type=int, default=256, help="training rows per arm")
    parser.add_argument("--held", type=int, default=32, help="held-out teacher rows per arm (KL, top-1)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="greedy answer length for accuracy")
    parser.add_argument("--kd-data", choices=["random", *CURATED], default="random",
                        help="the kd table's training rows")
    parser.add_argument("--min-rows", type=int, default=16, help="an arm keeping fewer rows is left out")
    parser.add_argument("--configs", default=None, help="kd table: comma-separated config names (default all)")
    parser.add_argument("--logprobs-mode", choices=["raw", "processed"], default=None,
                        help="the pool step's `logprobs_mode` (processed: the sampled distribution; its own pool rows)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs already in results.jsonl")
    return parser.parse_args(argv)


# --- the pool ---------------------------------------------------------------------------------------------------


def pool_spec(args) -> dict:
    import yaml

    spec = yaml.safe_load(POOL_SPEC.read_text())
    spec["store"] = "pool.duckdb"
    if args.logprobs_mode is not None:
        spec["steps"][0]["logprobs_mode"] = args.logprobs_mode
    return spec


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def read_jsonl(path: Path, limit: int) -> list[dict]:
    if not path.is_file():
        sys.exit(f"{path} not found; pass --data FOLDER (the folder of gsm8k_train.jsonl and gsm8k_test.jsonl)")
    with path.open() as fh:
        return [json.loads(line) for _, line in zip(range(limit), fh)]


def make_pool(args, folder: Path) -> Path:
    """Write the pool spec and its data into `folder` and `datagen run` it (only missing samples are generated)."""
    import yaml

    from datagen.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "problems.jsonl", read_jsonl(args.data / "gsm8k_train.jsonl", args.pool // 2))
    write_jsonl(folder / "gsm8k_test.jsonl", read_jsonl(args.data / "gsm8k_test.jsonl", args.test))
    spec = folder / "pool.yaml"
    spec.write_text(yaml.safe_dump(pool_spec(args), sort_keys=False))
    started = time.perf_counter()
    cli(main, ["run", str(spec)])
    print(f"pool: `datagen run` took {time.perf_counter() - started:.0f} s", flush=True)
    return spec


def cli(main, argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            sys.exit(f"`datagen {' '.join(argv)}` failed with exit code {exc.code}")


def pool_stats(spec: Path) -> None:
    """Rows, tokens, truncation and the teacher's own verify_math pass rate on the training questions."""
    import duckdb

    from curation.filters.verify_math import extract_answer, same_answer
    from datagen.spec.load import load_spec

    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        rows = con.execute("SELECT s.solution, s.answer, s._finish_reason, r.completion_tokens FROM solve s "
                           "JOIN outputs o ON o._id = s._id JOIN requests r ON r.key = o.key").fetchall()
    finally:
        con.close()
    right = sum(1 for sol, ans, _, _ in rows
                if (a := extract_answer(sol or "")) is not None and same_answer(extract_answer(ans), a))
    tokens = sum(t or 0 for *_, t in rows)
    truncated = sum(1 for _, _, f, _ in rows if f == "length")
    print(f"pool: {len(rows)} solutions, {tokens} tokens ({tokens / max(len(rows), 1):.0f} per solution), "
          f"{truncated} truncated; teacher verify_math pass rate {right}/{len(rows)} = "
          f"{right / max(len(rows), 1):.1%}", flush=True)


# --- arms -------------------------------------------------------------------------------------------------------


def curation_block(arm: str, n: int) -> dict:
    select: dict = {"n": n}
    block: dict = {"input": "solve", "decontaminate": {"against": "gsm8k_test", "column": "question", "ngram": 8}}
    if arm in CURATED:
        block["filters"] = [{"type": "truncated"}]
        if arm == "curated":
            block["filters"].append({"type": "verify_math", "column": "solution", "reference": "answer"})
        block["dedup"] = [{"type": "minhash", "column": "question", "threshold": 0.8}]
        select |= {"difficulty": {"column": "solution", "by": "length"},
                   "diversity": {"method": "kcenter", "column": "question"}}
    else:  # one group per row: s1's stratified sampling becomes a uniform random pick, seeded
        select["diversity"] = {"method": "cluster", "by_column": "_id"}
    return block | {"select": select}


def train_block(args, n_rows: int, changes: dict) -> dict:
    block = {"student": "bundled:smollm2-135m-instruct", "init": "truncate", "objective": "sft",
             "keep_layers": list(range(0, 30, 2)),  # the default before issue 30, as the recorded runs used
             "epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch,
             "max_length": args.max_length,
             "eval": {"split": round(args.held / n_rows, 4), "source": "gsm8k_test", "prompt": "question",
                      "reference": "answer", "max_new_tokens": args.max_new_tokens, "verify": "math"}}
    return {**block, **copy.deepcopy(changes)}


def arm_spec(args, folder: Path, name: str, seed: int, curation: dict, train: dict) -> Path:
    import yaml

    spec = pool_spec(args) | {"seed": seed, "curation": curation, "train": train}
    path = folder / f"arm-{slug(name)}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c == "." else "_" for c in name)


def curate(spec: Path) -> int:
    """`datagen curate`, then how many rows the selection holds."""
    import duckdb

    from datagen.cli import main
    from datagen.spec.load import load_spec

    cli(main, ["curate", str(spec)])
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM curated").fetchone()[0]
    finally:
        con.close()


def train_run(args, folder: Path, table: str, name: str, seed: int, spec: Path) -> dict:
    """`datagen train` on the spec (cached by the spec's text in results.jsonl): before/after metrics."""
    import tempfile

    from datagen.spec.load import load_spec
    from sft.train import train

    key = hashlib.sha256(spec.read_text().encode()).hexdigest()[:16]
    results = folder / "results.jsonl"
    if not args.fresh and results.exists():
        for line in results.read_text().splitlines():
            rec = json.loads(line)
            if rec["key"] == key:
                return {**rec, "table": table, "name": name}  # names may have been reworded since
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distill-student-") as out:
        r = train(load_spec(spec), out=Path(out) / "student", log=lambda m: print(m, flush=True))
    rec = {"key": key, "table": table, "name": name, "seed": seed, "train_rows": r.train_rows,
           "eval_rows": r.eval_rows, "steps": r.steps, "train_seconds": r.train_seconds,
           "run_seconds": time.perf_counter() - started, "before": r.before,
           "after": r.after, "notes": r.notes, "logprobs_mode": args.logprobs_mode or "raw"}
    with results.open("a") as fh:
        fh.write(json.dumps(rec, default=str) + "\n")
    print(f"{table} {name} seed {seed}: {summary(rec['after'])} ({r.steps} steps in {r.train_seconds:.0f} s; "
          f"{rec['run_seconds']:.0f} s with loading and scoring)", flush=True)
    return rec


def summary(metrics: dict) -> str:
    return ", ".join(f"{label} {metrics[key]:.4f}" for key, label in METRICS if metrics.get(key) is not None)


def selection_size(args, folder: Path, seed: int, arms) -> tuple[int, list[str]]:
    """Rows every arm selects for this seed (--n + --held, capped by what the curated arms keep), and the arms that
    keep enough rows to train on (at least --min-rows)."""
    want = args.n + args.held
    kept = {}
    for arm in arms:
        if arm in CURATED:
            spec = arm_spec(args, folder, arm, seed, curation_block(arm, want), train_block(args, want, {}))
            kept[arm] = curate(spec)
    usable = [a for a in arms if kept.get(a, want) >= args.min_rows]
    for arm in set(arms) - set(usable):
        print(f"seed {seed}: arm `{arm}` keeps {kept[arm]} rows (< --min-rows {args.min_rows}); left out", flush=True)
    size = min([want] + [kept[a] for a in usable if a in kept])
    if size < want:
        print(f"seed {seed}: the curated arms keep {kept} rows (< {want} wanted); every arm selects {size}",
              flush=True)
    return size, usable


# --- tables -----------------------------------------------------------------------------------------------------


def curation_table(args, folder: Path) -> list[dict]:
    runs = []
    for seed in range(1, args.seeds + 1):
        size, arms = selection_size(args, folder, seed, CURATED + ("random",))
        for arm in arms:
            spec = arm_spec(args, folder, arm, seed, curation_block(arm, size), train_block(args, size, {}))
            curate(spec)
            runs.append(train_run(args, folder, "curation", arm, seed, spec))
    return runs


def kd_table(args, folder: Path) -> list[dict]:
    names = list(KD_CONFIGS) if not args.configs else [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in names if c not in KD_CONFIGS]
    if unknown:
        sys.exit(f"unknown --configs {unknown}; known: {', '.join(KD_CONFIGS)}")
    runs = []
    for seed in range(1, args.seeds + 1):
        size, usable = selection_size(args, folder, seed, (args.kd_data,))
        if not usable:
            sys.exit(f"the `{args.kd_data}` selection keeps too few rows to train on; use --kd-data random")
        block = curation_block(args.kd_data, size)
        curate(arm_spec(args, folder, f"kd-data-{args.kd_data}", seed, block, train_block(args, size, {})))
        for name in names:  # same curation block, so `curated` stays the same rows for every config
            spec = arm_spec(args, folder, f"kd-{name}", seed, block, train_block(args, size, KD_CONFIGS[name]))
            runs.append(train_run(args, folder, "kd", name, seed, spec))
    return runs


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.4f} ± {sd:.4f}" if len(values) > 1 else f"{mean:.4f}"


def print_table(title: str, runs: list[dict]) -> None:
    names = list(dict.fromkeys(r["name"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    print(f"\n{title}: mean ± sample sd over seeds {seeds}; after training unless marked")
    header = ["arm", "rows (train/held)"] + [label for _, label in METRICS] + ["train s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    untrained = [r["before"] for r in runs if r["name"] == names[0]]  # one per seed (held-out rows follow the seed)
    print("| untrained student | - | " + " | ".join(spread([b[k] for b in untrained if b.get(k) is not None])
                                                       for k, _ in METRICS) + " | - |")
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        cells = [spread([r["after"][k] for r in mine if r["after"].get(k) is not None]) for k, _ in METRICS]
        sizes = f"{mine[0]['train_rows']}/{mine[0]['eval_rows']}"
        seconds = statistics.fmean(r["train_seconds"] for r in mine)
        print(f"| {name} | {sizes} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    print(f"ref NLL / ref acc: GSM8K test references ({runs[0]['after'].get('reference_rows')} questions); "
          "KL to T / top-1 =T: held-out teacher rows; held-out NLL: the teacher's held-out answers")


def print_paired(runs: list[dict], baseline: str) -> None:
    """Each arm minus `baseline` on the same seed (same rows, same held-out split), per metric: the differences and
    their mean ± sd. Arms share seeds, so this is what says whether a difference exceeds the seed spread."""
    base = {r["seed"]: r["after"] for r in runs if r["name"] == baseline}
    names = [n for n in dict.fromkeys(r["name"] for r in runs) if n != baseline]
    if not base or not names:
        return
    print(f"\npaired by seed, each arm minus `{baseline}` (seeds {sorted(base)}): mean ± sd (each seed's)")
    print("| arm | " + " | ".join(label for _, label in METRICS) + " |\n|" + "---|" * (len(METRICS) + 1))
    for name in names:
        cells = []
        for key, _ in METRICS:
            diffs = [r["after"][key] - base[r["seed"]][key] for r in runs
                     if r["name"] == name and r["seed"] in base
                     and r["after"].get(key) is not None and base[r["seed"]].get(key) is not None]
            cells.append(paired_cell(diffs))
        print(f"| {name} | " + " | ".join(cells) + " |")


def paired_cell(diffs: list[float]) -> str:
    if not diffs:
        return "-"
    each = ", ".join(f"{d:+.3f}" for d in diffs)
    if len(diffs) == 1:
        return f"{diffs[0]:+.3f} (1 seed)"
    return f"{statistics.fmean(diffs):+.3f} ± {statistics.stdev(diffs):.3f} ({each})"


def main() -> None:
    args = arguments()
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datagen.bundled import cache_dir

    folder = (args.cache or cache_dir() / "bench" / "distill_effect") / "pool"
    started = time.perf_counter()
    spec = make_pool(args, folder)
    pool_stats(spec)
    if args.table == "curation":
        runs = curation_table(args, folder)
        print_table("curated vs random", runs)
        print_paired(runs, "random")
    elif args.table == "kd":
        runs = kd_table(args, folder)
        print_table(f"sft vs kd (data: {args.kd_data}, logprobs {args.logprobs_mode or 'raw'})", runs)
        print_paired(runs, "sft")
    print(f"\n{args.table}: {time.perf_counter() - started:.0f} s in all; cache {folder}", flush=True)


if __name__ == "__main__":
    main()
