"""A scripted reasoning teacher for specs/reasoning_distill.yaml: it answers GSM8K problems the way real reasoning
servers do, with known right and wrong answers, so the tests know what every row and every decision must be.

Problem k (in file order) gets shape SHAPES[k % len(SHAPES)]:
- `field_right`: the trace in `reasoning_content` (DeepSeek's API, older vLLM), the right answer; the trace ends on
  a wrong number, which must not count as the answer;
- `inline_right`: `<think>...</think>` inline in the content, the right answer;
- `field_wrong`: the trace in `reasoning` (newer vLLM), a wrong answer; the trace ends on the right number;
- `inline_no_number`: inline, the trace ends on the right number but the answer has none, so verify_math must drop
  it (on the whole text it would pass);
- `unclosed`: inline `<think>` cut at max_tokens (finish reason `length`), no answer;
- `short_trace`: the trace in `reasoning_content` with 3 words, below the reasoning filter's min_tokens;
- `no_trace`: no trace at all, the right answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

SPECS = Path(__file__).resolve().parent.parent / "specs"
SHAPES = ["field_right", "inline_right", "field_wrong", "inline_no_number", "unclosed", "short_trace", "no_trace"]
LIMIT = 14  # problems the test runs: every shape twice


def problems() -> list[dict]:
    rows = [json.loads(line) for line in (SPECS / "data" / "gsm8k_train_501_548.jsonl").read_text().splitlines()]
    return rows[:LIMIT]


def reference(answer: str) -> int:
    return int(re.search(r"####\s*(-?[\d,]+)", answer).group(1).replace(",", ""))


def shape_of(question: str) -> tuple[str, int]:
    for k, row in enumerate(problems()):
        if row["question"] in question:
            return SHAPES[k % len(SHAPES)], reference(row["answer"])
    raise KeyError(question[:60])


def long_trace(last_number: int) -> str:
    words = " ".join(f"step{i} checks the arithmetic once more" for i in range(8))
    return f"Let me work through this carefully. {words}. So the number I end on here is {last_number}"


def script(body: dict) -> dict:
    shape, right = shape_of(body["messages"][-1]["content"])
    if shape == "field_right":
        return {"text": f"The total is {right}.\n#### {right}", "reasoning_content": long_trace(right + 7),
                "reasoning_tokens": 61}
    if shape == "inline_right":
        return {"text": f"<think>\n{long_trace(right + 3)}\n</think>\n\nSo it is {right}.\n#### {right}"}
    if shape == "field_wrong":
        return {"text": f"#### {right + 1}", "reasoning": long_trace(right)}
    if shape == "inline_no_number":
        return {"text": f"<think>{long_trace(right)}</think>I cannot tell."}
    if shape == "unclosed":
        return {"text": f"<think>{long_trace(right)} and then", "finish_reason": "length"}
    if shape == "short_trace":
        return {"text": f"#### {right}", "reasoning_content": "Easy, add them."}
    return {"text": f"#### {right}"}


def example_on(server_url: str, folder: Path, keep_steps: tuple[str, ...] = ("solve",), edit=None) -> Path:
    """specs/reasoning_distill.yaml with `r1` pointed at the scripted server, its data path made absolute, only
    `keep_steps`, LIMIT problems and a small training run."""
    doc = yaml.safe_load((SPECS / "reasoning_distill.yaml").read_text())
    doc["teachers"]["r1"].update(base_url=server_url, model="scripted")
    doc["sources"]["problems"].update(path=str(SPECS / "data" / "gsm8k_train_501_548.jsonl"), limit=LIMIT)
    doc["steps"] = [s for s in doc["steps"] if s["name"] in keep_steps]
    doc["train"].update(max_steps=1, batch_size=2, max_length=384, eval=None)
    if edit is not None:
        edit(doc)
    spec = folder / "reasoning_distill.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    return spec
