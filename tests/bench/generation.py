"""Generation throughput: a whole `datagen run` process against a whole raw-vLLM script, each with its own engine.

Each side runs in its own process with its own engine (no shared prefix cache), with the same engine settings
(enforce_eager, max_model_len 2048, float32, a 2 GiB KV cache, seed 0, the engine core in-process as datagen runs
it, no core reserved on 2 CPUs), and is timed as a whole process: start, engine start, generation, exit. Output
tokens/s = the completion tokens it produced / its wall time. The two sides alternate which goes first over the
repeats; the ratio reported is the median of the per-repeat ratios.

Case 1: 512 distinct GSM8K test questions, greedy, up to 160 tokens (answers end at different lengths, so a batch
barrier would show): `datagen run` vs one `LLM.chat` call with all 512. Target: >= 0.97.
Case 2: 64 GSM8K questions x n = 4 (temperature 0.8, 48 tokens) with the same 4 demos as turns: `datagen run` vs the
raw engine's own best call, one request with `n=4` per question, all in one `LLM.chat` call. Target: >= 0.95.

Run: .venv/bin/python tests/bench/generation.py [--repeats 3] [--data ../shared/data/gsm8k_test.jsonl]
(about 35 minutes on 2 cores with 3 repeats; run it alone on the machine)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"
ENGINE = {"enforce_eager": True, "max_model_len": 2048, "dtype": "float32", "kv_cache_memory_bytes": 2 * 2**30,
          "seed": 0}
ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_LOGGING_LEVEL": "WARNING",
       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

RAW = """\
import json, sys
from vllm import LLM, SamplingParams

def main():
    job = json.load(open(sys.argv[1]))
    llm = LLM(model=job["model"], **job["engine"])
    outs = llm.chat(job["messages"], SamplingParams(**job["sampling"]), use_tqdm=False)
    print(json.dumps({"tokens": sum(len(c.token_ids) for o in outs for c in o.outputs)}))
    llm.llm_engine.engine_core.shutdown()

if __name__ == "__main__":
    main()
"""

SPEC = """\
name: bench
teachers:
  t:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    sampling: {sampling}
    engine: {{enforce_eager: true, max_model_len: 2048, kv_cache_gb: 2, dtype: float32}}
sources:
  p: {{path: p.jsonl}}
  d: {{path: d.jsonl}}
steps:
  - name: s
    strategy: label
    teacher: t
    input: p
{demos}    prompt: "{{{{ question }}}}"
    n: {n}
    output: y
"""


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **ENV})
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def datagen_side(folder: Path) -> float:
    import duckdb

    store = folder / "runs" / "bench.duckdb"
    store.unlink(missing_ok=True)  # every repeat generates everything
    seconds, _ = timed([sys.executable, "-m", "datagen.cli", "run", "-q", "spec.yaml"], folder)
    con = duckdb.connect(str(store), read_only=True)
    tokens = con.execute("select sum(completion_tokens) from requests where status = 'done'").fetchall()[0][0]
    con.close()
    return tokens / seconds


def raw_side(folder: Path) -> float:
    seconds, out = timed([sys.executable, "raw.py", "job.json"], folder)
    return json.loads(out.strip().splitlines()[-1])["tokens"] / seconds


def prepare(folder: Path, questions: list[dict], demos: list[dict], sampling: dict, n: int) -> None:
    from datagen.bundled import resolve_model

    folder.mkdir(parents=True)
    (folder / "p.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (folder / "d.jsonl").write_text("".join(json.dumps(d) + "\n" for d in (demos or questions[:1])))
    demo_key = "    demos: {from: d, k: 4, as: turns, user: question, assistant: answer}\n" if demos else ""
    spec_sampling = {k: v for k, v in sampling.items() if k != "n"}
    (folder / "spec.yaml").write_text(SPEC.format(sampling=json.dumps(spec_sampling), demos=demo_key, n=n))
    turns = [t for d in demos for t in ({"role": "user", "content": d["question"]},
                                        {"role": "assistant", "content": d["answer"]})]
    messages = [turns + [{"role": "user", "content": q["question"]}] for q in questions]
    job = {"model": str(resolve_model("bundled:smollm2-135m-instruct")), "engine": ENGINE, "messages": messages,
           "sampling": {**sampling, "n": n}}
    (folder / "job.json").write_text(json.dumps(job))
    (folder / "raw.py").write_text(RAW)


def compare(name: str, folder: Path, repeats: int, target: float) -> None:
    ratios, dg_rates, raw_rates = [], [], []
    for r in range(repeats):
        first_datagen = r % 2 == 0
        if first_datagen:
            dg, raw = datagen_side(folder), raw_side(folder)
        else:
            raw, dg = raw_side(folder), datagen_side(folder)
        ratios.append(dg / raw)
        dg_rates.append(dg)
        raw_rates.append(raw)
        print(f"  {name} repeat {r + 1} ({'datagen' if first_datagen else 'raw'} first): datagen {dg:.1f} tok/s, "
              f"raw {raw:.1f} tok/s, ratio {dg / raw:.3f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"{name}: datagen {statistics.median(dg_rates):.1f} tok/s, raw vLLM {statistics.median(raw_rates):.1f} "
          f"tok/s (medians); median ratio {ratio:.3f} over {repeats} repeats (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f}); target >= {target} {'met' if ratio >= target else 'MISSED'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="GSM8K test split (question, answer)")
    parser.add_argument("--cases", default="1,2")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        if "1" in args.cases.split(","):
            prepare(Path(tmp) / "case1", rows[:512], [], {"temperature": 0.0, "max_tokens": 160}, 1)
            compare("case 1: 512 distinct prompts, greedy, <= 160 tokens", Path(tmp) / "case1", args.repeats, 0.97)
        if "2" in args.cases.split(","):
            prepare(Path(tmp) / "case2", rows[600:664], rows[:4], {"temperature": 0.8, "max_tokens": 48}, 4)
            compare("case 2: 64 questions x n=4, 4 demos as turns", Path(tmp) / "case2", args.repeats, 0.95)


if __name__ == "__main__":
    main()
