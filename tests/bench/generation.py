"""Generation throughput: `datagen run` against `vllm.LLM.chat` directly, in one process, same prompts and sampling.

Case 1, distinct prompts: output tokens/s of datagen's vLLM teacher vs one raw `llm.chat` call (target: >= 0.95).
Case 2, 16 GSM8K questions with 4 few-shot demos as turns, n = 4, 48 output tokens: datagen (parallel sampling,
prefix-ordered) vs the naive raw way, one request per sample in input order (target: >= 1.5).

Run: .venv/bin/python tests/bench/generation.py   (about 5 minutes on 2 cores; one engine is shared by all cases)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# this folder holds a curation.py benchmark that would shadow the `curation` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
DATA = ROOT / "specs" / "data" / "gsm8k_train_500.jsonl"


def main() -> None:
    from vllm import SamplingParams

    from datagen.bundled import resolve_model
    from datagen.run import run
    from datagen.spec.load import load_spec
    from datagen.teachers.vllm_teacher import VLLMTeacher

    problems = [json.loads(line) for line in DATA.read_text().splitlines()]
    path = str(resolve_model("bundled:smollm2-135m-instruct"))
    teacher = VLLMTeacher("bench", path, {"max_model_len": 2048, "kv_cache_gb": 2, "seed": 0})
    llm = teacher._start()

    # the run loop builds its own teacher; hand it the already started engine so both sides share one
    import datagen.teachers as teachers_module

    teachers_module.make_teacher = lambda *a, **k: teacher
    teacher.close = lambda: None  # type: ignore[method-assign]

    def datagen_run(spec_text: str, rows: list[dict]) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (Path(tmp) / "spec.yaml").write_text(spec_text)
            start = time.perf_counter()
            summary = run(load_spec(Path(tmp) / "spec.yaml"), log=lambda m: None)
            seconds = time.perf_counter() - start
            return summary.steps[0].completion_tokens / seconds

    def raw(messages: list, params: list) -> float:
        start = time.perf_counter()
        outs = llm.chat(messages, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / seconds

    # warm-up so neither side pays first-call costs
    llm.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=8), use_tqdm=False)

    # case 1: 64 distinct prompts, one sample each
    rows = problems[:64]
    spec1 = """\
name: bench1
teachers: {t: {backend: vllm, model: bundled:smollm2-135m-instruct, sampling: {temperature: 0.7, max_tokens: 96}}}
sources: {p: {path: p.jsonl}}
steps:
  - {name: s, strategy: label, teacher: t, input: p, prompt: "{{ question }}", output: y}
"""
    msgs = [[{"role": "user", "content": r["question"]}] for r in rows]
    raw1 = raw(msgs, SamplingParams(temperature=0.7, max_tokens=96))
    dg1 = datagen_run(spec1, rows)

    # case 2: 16 questions, 4 demos as turns, n = 4, 48 tokens
    rows2 = problems[100:116]
    demos = problems[:4]
    spec2 = """\
name: bench2
teachers: {t: {backend: vllm, model: bundled:smollm2-135m-instruct, sampling: {temperature: 0.8, max_tokens: 48}}}
sources:
  p: {path: p.jsonl}
  d: {query: "select * from p limit 4"}
  q: {query: "select * from p offset 4"}
steps:
  - name: s
    strategy: label
    teacher: t
    input: q
    demos: {from: d, k: 4, as: turns, user: question, assistant: answer}
    prompt: "{{ question }}"
    n: 4
    output: y
"""
    # the naive way: one request per sample, in input order, with the same demo turns
    naive_msgs, naive_params = [], []
    for r in rows2:
        turns = []
        for d in demos:
            turns += [{"role": "user", "content": d["question"]}, {"role": "assistant", "content": d["answer"]}]
        for _ in range(4):
            naive_msgs.append(turns + [{"role": "user", "content": r["question"]}])
            naive_params.append(SamplingParams(temperature=0.8, max_tokens=48))
    raw2 = raw(naive_msgs, naive_params)
    # the best a direct caller can do: one request per question with n = 4 (parallel sampling), same order
    best_msgs = naive_msgs[::4]
    best2 = raw(best_msgs, [SamplingParams(n=4, temperature=0.8, max_tokens=48) for _ in best_msgs])
    dg2 = datagen_run(spec2, demos + rows2)

    print(f"case 1 distinct prompts: raw vLLM {raw1:.1f} tok/s, datagen {dg1:.1f} tok/s, ratio {dg1 / raw1:.2f}")
    print(f"case 2 demos + n=4:      naive raw {raw2:.1f} tok/s, datagen {dg2:.1f} tok/s, ratio {dg2 / raw2:.2f}")
    print(f"         for reference:  raw with n=4 {best2:.1f} tok/s ({best2 / raw2:.2f} x naive); "
          f"datagen / raw n=4 {dg2 / best2:.2f}")
    llm.llm_engine.engine_core.shutdown(timeout=15)


if __name__ == "__main__":
    main()
