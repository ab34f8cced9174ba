"""Experiment: does training on the teacher's soft labels (kd) beat training on its text alone (sft)?

The bundled model is the teacher: on the vLLM engine it answers GSM8K questions, keeping its top-k logprobs.
The student is a truncated copy of it (every other layer: 15 of 30). It is trained on the same teacher-labelled rows
once with `objective: sft` and once with `objective: kd` (same steps, learning rate, batch, seed), through
`datagen train`. Printed: the held-out loss per token on the teacher's outputs for the teacher, the untrained
student, the SFT student and the KD student (lower is closer to the teacher), plus KD against SFT.

Run: .venv/bin/python tests/bench/kd_vs_sft.py   (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "specs" / "data" / "gsm8k_train_500.jsonl"

SPEC = """\
name: kd_vs_sft
seed: 7
teachers:
  big:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    sampling: {{temperature: 0.7, max_tokens: {max_tokens}}}
    engine: {{max_model_len: 1024, kv_cache_gb: 1}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: solve
    strategy: label
    teacher: big
    input: problems
    prompt: "Solve step by step.\\n{{{{ question }}}}"
    logprobs: {k}
    output: solution
train:
  student: bundled:smollm2-135m-instruct
  init: truncate
  objective: {objective}
  kd: {{alpha: {alpha}, temperature: {temperature}, divergence: {divergence}}}
  epochs: {epochs}
  batch_size: 8
  max_length: 384
  learning_rate: {lr}
  eval: {{split: 0.2, max_new_tokens: 8}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--divergence", default="forward")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from datagen.api import run
    from datagen.spec.load import load_spec
    from datagen.api import plan as build_plan
    from sft.evaluate import token_loss
    from sft.rows import load_rows
    from sft.model import load_student
    from sft.train import train

    problems = [json.loads(line) for line in DATA.read_text().splitlines()][: args.rows]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))

        def spec_for(objective: str) -> Path:
            path = folder / f"{objective}.yaml"
            path.write_text(SPEC.format(objective=objective, max_tokens=args.max_tokens, k=args.k, epochs=args.epochs,
                                        lr=args.lr, alpha=args.alpha, temperature=args.temperature,
                                        divergence=args.divergence))
            return path

        sft_spec, kd_spec = spec_for("sft"), spec_for("kd")
        run(load_spec(kd_spec), log=lambda m: None)  # both specs share the store (same name), so one run labels both
        results = {}
        for name, spec in (("sft", sft_spec), ("kd", kd_spec)):
            results[name] = train(load_spec(spec), out=folder / f"student_{name}", log=lambda m: None)
            r = results[name]
            print(f"{name}: {r.train_rows} rows, {r.steps} steps, {r.train_seconds:.0f} s; "
                  f"held-out loss {r.before['loss']:.4f} -> {r.after['loss']:.4f}; {'; '.join(r.notes)}", flush=True)
        loaded = load_spec(kd_spec)
        rows = load_rows(loaded, build_plan(loaded), None, 0.2)
        teacher, tok = load_student(loaded.spec.train.model_copy(update={"init": "pretrained"}), loaded.dir)
        teacher_loss, tokens = token_loss(teacher, tok, rows.eval, 384)

    untrained = results["sft"].before["loss"]
    print(f"\nteacher: bundled SmolLM2-135M (30 layers), {args.rows} GSM8K questions, up to {args.max_tokens} tokens, "
          f"top-{args.k} logprobs")
    print(f"student: truncated copy (15 layers); {args.epochs} epochs, lr {args.lr}, batch 8; kd alpha {args.alpha}, "
          f"T {args.temperature}, {args.divergence} KL")
    print(f"held-out loss per token on the teacher's outputs ({len(rows.eval)} rows, {tokens} tokens):")
    print(f"  teacher            {teacher_loss:.4f}")
    print(f"  untrained student  {untrained:.4f}")
    print(f"  SFT student        {results['sft'].after['loss']:.4f}")
    print(f"  KD student         {results['kd'].after['loss']:.4f}")
    gap_sft = results["sft"].after["loss"] - teacher_loss
    gap_kd = results["kd"].after["loss"] - teacher_loss
    print(f"gap to the teacher: SFT {gap_sft:.4f}, KD {gap_kd:.4f} (KD / SFT {gap_kd / gap_sft:.3f})")


if __name__ == "__main__":
    main()
