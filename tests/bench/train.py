"""Training throughput: `datagen train` (objective sft) against a plain TRL `SFTTrainer` on the same rows and
settings, in one process. Rows: GSM8K questions with their reference solutions as the teacher's replies (served by
the scripted OpenAI-compatible teacher, so the store is real). Both sides train the bundled model, full weights,
the same steps, batch, max_length and precision (float32 on CPU); tokens/s is non-padding tokens seen per second of `trainer.train()`. The two
sides alternate and each keeps its best of `--repeats` runs. Target: ratio >= 0.95.

Run: .venv/bin/python tests/bench/train.py   (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# this folder holds a curation.py benchmark that would shadow the `curation` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "specs" / "data" / "gsm8k_train_500.jsonl"

SPEC = """\
name: bench_train
seed: 1
teachers:
  remote: {{backend: openai, base_url: "{base_url}", model: scripted, sampling: {{temperature: 0, max_tokens: 400}}}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - {{name: solve, strategy: label, teacher: remote, input: problems, prompt: "{{{{ question }}}}", output: solution}}
train:
  objective: sft
  max_steps: {steps}
  batch_size: {batch}
  max_length: {max_length}
  learning_rate: 1.0e-5
"""


def make_store(folder: Path, rows: int, steps: int, batch: int, max_length: int) -> Path:
    from datagen.api import run
    from datagen.spec.load import load_spec
    from tests.scripted_server import ScriptedServer

    problems = [json.loads(line) for line in DATA.read_text().splitlines()][:rows]
    answers = {p["question"]: p["answer"] for p in problems}
    (folder / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    with ScriptedServer(lambda body: answers[body["messages"][-1]["content"]]) as server:
        spec = folder / "spec.yaml"
        spec.write_text(SPEC.format(base_url=server.base_url, steps=steps, batch=batch, max_length=max_length))
        run(load_spec(spec), log=lambda m: None)
    return spec


def plain_trl(spec: Path) -> float:
    """The same rows, model and settings straight through TRL, as a user would write it."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from datagen.bundled import resolve_model
    from datagen.spec.load import load_spec
    from datagen.api import plan as build_plan
    from sft.rows import load_rows

    loaded = load_spec(spec)
    settings = loaded.spec.train
    rows = load_rows(loaded, build_plan(loaded), None, None)
    path = resolve_model(settings.student)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows.train])
    with tempfile.TemporaryDirectory() as work:
        config = SFTConfig(output_dir=work, max_steps=settings.max_steps, learning_rate=settings.learning_rate,
                           per_device_train_batch_size=settings.batch_size, max_length=settings.max_length,
                           seed=loaded.spec.seed, data_seed=loaded.spec.seed, logging_steps=1, save_strategy="no",
                           report_to="none", use_cpu=True, disable_tqdm=True, bf16=False)
        trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return trainer._total_train_tokens / seconds


def through_datagen(spec: Path, out: Path) -> float:
    from datagen.spec.load import load_spec
    from sft.train import train

    result = train(load_spec(spec), out=out, log=lambda m: None)
    return result.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_store(Path(tmp), args.rows, args.steps, args.batch, args.max_length)
        base, ours = [], []
        for i in range(args.repeats):
            base.append(plain_trl(spec))
            ours.append(through_datagen(spec, Path(tmp) / f"student{i}"))
            print(f"round {i + 1}: plain TRL {base[-1]:.0f} tokens/s, datagen train {ours[-1]:.0f} tokens/s",
                  flush=True)
    print(f"\n{args.rows} rows, {args.steps} steps of {args.batch}, max_length {args.max_length}, full weights, CPU")
    print(f"plain TRL SFTTrainer: {max(base):.0f} tokens/s (best of {args.repeats})")
    print(f"datagen train:        {max(ours):.0f} tokens/s (best of {args.repeats})")
    print(f"ratio datagen / TRL:  {max(ours) / max(base):.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
