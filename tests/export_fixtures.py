"""A small real store for the export, push and report tests: a spec run against the scripted teacher on loopback.

The spec has a system prompt, demos as turns and n=2, so exported conversations have every kind of turn. The
teacher's key variable holds a fake secret that must never reach an exported file.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripted_server import ScriptedServer

SECRET = "sk-test-SECRET123"

PROBLEMS = [
    ("What is 2+3?", "#### 5"), ("What is 4*4?", "#### 16"), ("What is 10-7?", "#### 3"),
    ("What is 9/3?", "#### 3"), ("What is 6+6?", "#### 12"), ("What is 5*5?", "#### 25"),
]

SPEC = """\
name: tiny
description: Tiny arithmetic set for export tests
seed: 3
teachers:
  remote:
    backend: openai
    base_url: {base_url}
    model: scripted
    api_key_env: TEACHER_API_KEY
    sampling: {{temperature: 0.5, max_tokens: 64}}
sources:
  problems:
    path: data/problems.jsonl
  examples:
    query: "select * from problems limit 3"
steps:
  - name: solve
    strategy: label
    teacher: remote
    input: problems
    system: You are a careful math tutor.
    demos: {{from: examples, k: 1, as: turns, user: question, assistant: answer}}
    prompt: "{{{{ question }}}}"
    n: 2
    output: solution
{extra}"""


def reply(body: dict) -> str:
    """Replies of different lengths per question, so length plots have a spread."""
    question = body["messages"][-1]["content"]
    words = " ".join(["carefully"] * (len(question) * 7 % 9))
    return f"Let me think {words} about {question} step by step. #### {len(question)}"


def make_spec(folder: Path, base_url: str, extra: str = "") -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "problems.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                                 for q, a in PROBLEMS))
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(base_url=base_url, extra=extra))
    return spec


def build_store(folder: Path, monkeypatch, extra: str = "") -> Path:
    """Write the spec (plus `extra` blocks: export, curation) into `folder`, run it against the scripted teacher,
    and return the spec path."""
    from datagen.api import run
    from datagen.spec.load import load_spec

    monkeypatch.setenv("TEACHER_API_KEY", SECRET)
    with ScriptedServer(reply) as server:
        spec = make_spec(folder, server.base_url, extra)
        run(load_spec(spec), log=lambda m: None)
    return spec


def set_export(spec: Path, export: str) -> None:
    """Replace the spec's export block (the store stays: the export block does not change any request)."""
    text = spec.read_text()
    head = text.split("\nexport:")[0] + "\n" if "\nexport:" in text else text
    spec.write_text(head + export)
