"""A small real store to train on: a spec run against a scripted OpenAI-compatible teacher on loopback whose replies
carry top-k logprobs as token *strings* of the bundled tokenizer (what vLLM's server sends), so KD exercises the
string -> id mapping. Replies are right for some questions and wrong for others, so accuracy means something.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from datagen.api import run
from datagen.spec.load import load_spec
from tests.scripted_server import ScriptedServer, completion

PROBLEMS = [(a, b) for a, b in [(2, 3), (4, 4), (10, 7), (6, 1), (9, 9), (12, 30), (5, 8), (7, 7), (1, 1), (8, 2), (11, 4), (3, 5)]]

SPEC = """\
name: trainset
seed: 5
teachers:
  remote:
    backend: openai
    base_url: {base_url}
    model: scripted
    sampling: {{temperature: 0.0, max_tokens: 64}}
sources:
  problems: {{path: problems.jsonl}}
{sources}steps:
  - name: solve
    strategy: label
    teacher: remote
    input: problems
    system: Answer briefly.
    prompt: "What is {{{{ question }}}}?"
    logprobs: 3
    output: solution
curation:
  input: solve
  filters:
    - {{type: truncated}}
    - {{type: verify_math, column: solution, reference: answer}}
train:
  student: bundled:smollm2-135m-instruct
  output: out/student
  objective: {objective}
  kd: {{alpha: 0.5, temperature: 2.0, divergence: forward}}
  max_steps: 2
  batch_size: 2
  max_length: 64
  learning_rate: 1.0e-3
{extra}
"""


def teacher_script(tok):
    """Reply `a + b = c #### c` (wrong by one for every third question) with logprobs over the real tokens."""

    def script(body: dict) -> dict:
        question = body["messages"][-1]["content"]
        a, b = [int(x) for x in question.replace("What is ", "").rstrip("?").split(" plus ")]
        total = a + b + (1 if a % 3 == 0 else 0)
        text = f"{a} plus {b} is {total}. #### {total}"
        reply = completion(body, text)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        alts = tok(" the and of", add_special_tokens=False)["input_ids"]
        content = []
        for i in ids:
            s = tok.decode([i])
            top = [{"token": s, "logprob": math.log(0.7)}]
            top += [{"token": tok.decode([a]), "logprob": math.log(p)} for a, p in zip(alts, (0.2, 0.05)) if a != i]
            content.append({"token": s, "logprob": math.log(0.7), "top_logprobs": top[: body["top_logprobs"]]})
        reply["choices"][0]["logprobs"] = {"content": content}
        return {"raw": json.dumps(reply)}

    return script


def make_store(folder: Path, model_path: str, objective: str = "sft", extra: str = "", sources: str = "") -> Path:
    """Write the spec and its problems into `folder` and run it against the scripted teacher; returns the spec."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.jsonl").write_text(
        "".join(json.dumps({"question": f"{a} plus {b}", "answer": f"#### {a + b}"}) + "\n" for a, b in PROBLEMS))
    tok = AutoTokenizer.from_pretrained(model_path)
    with ScriptedServer(teacher_script(tok)) as server:
        spec = folder / "spec.yaml"
        write_spec(spec, server.base_url, objective, extra, sources)
        run(load_spec(spec), log=lambda m: None)
    return spec


def write_spec(spec: Path, base_url: str, objective: str, extra: str = "", sources: str = "") -> None:
    """`extra`: lines added to the train block; `sources`: lines added to the sources block (two-space indent)."""
    spec.write_text(SPEC.format(base_url=base_url, objective=objective, extra=extra, sources=sources))
