"""`strategy: score` over HTTP: against vLLM's own OpenAI-compatible server (the session's, on the bundled model) the
stored soft labels of human GSM8K solutions spell the texts back and equal the model's own log-probabilities (a
transformers forward pass here); a server that cannot score (the scripted one: no /tokenize, no prompt_logprobs)
fails every request with the reason, and the run stops on it. The in-process vLLM path is in test_e2e_vllm.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent

SPEC = """\
name: scored_http
teachers:
  remote: {{backend: openai, base_url: "{base}", model: {model}, max_concurrency: 4, max_attempts: 1}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - name: read
    strategy: score
    teacher: remote
    input: problems
    system: Solve the problem.
    prompt: "{{{{ question }}}}"
    response: answer
    logprobs: 5
    output: solution
"""


def write(tmp_path: Path, base: str, model: str, n: int = 4) -> Path:
    lines = (ROOT / "specs" / "data" / "gsm8k_train_500.jsonl").read_text().splitlines()[:n]
    (tmp_path / "problems.jsonl").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(base=base, model=model))
    return spec


def datagen(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True, timeout=600)


def query(spec: Path, sql: str) -> list[dict]:
    out = datagen("query", str(spec), "--format", "json", sql)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_vllm_server_scores_given_text(tmp_path, vllm_server, bundled_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = write(tmp_path, vllm_server, "smollm2")
    out = datagen("run", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = query(spec, "select _id, question, solution from read")
    assert len(rows) == 4
    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    model = AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval()
    for r in rows:
        got = query(spec, f"select token, token_id, logprob, top_ids, top_logprobs from logprobs where row_id = "
                          f"'{r['_id']}' order by position")
        assert "".join(g["token"] for g in got) == r["solution"]
        ids = tok(r["solution"], add_special_tokens=False)["input_ids"]
        assert [g["token_id"] for g in got] == ids and all(len(g["top_ids"]) == 5 for g in got)
        head = tok.apply_chat_template([{"role": "system", "content": "Solve the problem."},
                                        {"role": "user", "content": r["question"]}], add_generation_prompt=True)
        head = list(head["input_ids"] if hasattr(head, "keys") else head)
        with torch.no_grad():
            lp = model(torch.tensor([head + ids])).logits[0, len(head) - 1:-1].float().log_softmax(-1)
        want = lp.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1).tolist()
        # vLLM's CPU kernels and transformers' differ in the last digits; the store keeps 1/2048 nat
        assert [g["logprob"] for g in got] == pytest.approx(want, abs=2e-3)
        # the same most likely token but where the two engines' last digits flip a near-tie
        assert sum(g["top_ids"][0] == t for g, t in zip(got, lp.argmax(-1).tolist())) >= 0.95 * len(ids)
    again = datagen("run", str(spec))
    assert again.returncode == 0 and query(spec, "select count(*) as n from requests where step = 'read'") == [
        {"n": 4}]


def test_a_server_that_cannot_score_fails_with_the_reason(tmp_path):
    with ScriptedServer() as server:
        spec = write(tmp_path, server.base_url, "scripted")
        out = datagen("run", str(spec))
    assert out.returncode == 1 and "max_failure_rate" in out.stderr and "Traceback" not in out.stderr
    errors = query(spec, "select error, error_kind from requests where step = 'read'")
    assert len(errors) == 4
    assert all("cannot score given text" in e["error"] and e["error_kind"] == "request" for e in errors), errors
