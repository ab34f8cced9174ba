"""`strategy: score`: the teacher reads text it did not write (human GSM8K solutions here) and keeps its top-k
log-probabilities at every token. The bundled model through the transformers backend (the vLLM paths are in
tests/test_score_vllm.py): the stored tokens spell each text back, the stored numbers are the model's own (checked
against a forward pass), a re-run sends nothing, KD trains on the scored rows, and the spec's mistakes name the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.api import run
from datagen.errors import UserError
from datagen.spec.load import load_spec

ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A pen costs $2. How much do 5 pens cost?", "answer": "5 pens cost 5 * 2 = $<<5*2=10>>10.\n#### 10"},
    {"question": "Café prices: a crêpe is 3 €. Two crêpes?", "answer": "Deux crêpes coûtent 2 × 3 = 6 € — voilà.\n#### 6"},
    {"question": "What is 12 divided by 4?", "answer": "12 / 4 = <<12/4=3>>3\n#### 3"},
    {"question": "Emoji count: 🍎🍎🍎 plus 🍎?", "answer": "🍎🍎🍎 + 🍎 = 4 🍎\n#### 4"},
    {"question": "Empty?", "answer": ""},
]

SPEC = """\
name: scored
seed: 1
teachers:
  small: {{backend: transformers, model: "bundled:smollm2-135m-instruct"}}
sources:
  people: {{path: people.jsonl}}
steps:
  - name: read
    strategy: score
    teacher: small
    input: people
    system: Solve the problem.
    prompt: "{{{{ question }}}}"
    response: answer
    logprobs: 5
    output: solution
train:
  student: bundled:smollm2-135m-instruct
  input: read
  output: out/student
  objective: kd
  kd: {{alpha: 0.5, temperature: 1.0}}
  max_steps: 1
  batch_size: 2
  max_length: 96
  learning_rate: 1.0e-4
{extra}"""


def write_spec(folder: Path, extra: str = "", step_extra: str = "") -> Path:
    (folder / "people.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    text = SPEC.format(extra=extra)
    if step_extra:
        text = text.replace("    output: solution\n", "    output: solution\n" + step_extra)
    spec = folder / "spec.yaml"
    spec.write_text(text)
    return spec


def query(spec: Path, sql: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "query", str(spec), "--format", "json", sql],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, bundled_model_path):
    spec = write_spec(tmp_path_factory.mktemp("score"))
    summary = run(spec)
    return spec, summary


def test_every_text_is_scored_and_its_tokens_spell_it_back(scored, bundled_model_path):
    from transformers import AutoTokenizer

    spec, summary = scored
    rows = query(spec, "select _id, question, solution from read order by question")
    assert len(rows) == 5  # the empty answer has nothing to score
    assert {r["solution"] for r in rows} == {r["answer"] for r in ROWS if r["answer"]}
    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    for r in rows:
        pos = query(spec, f"select token, token_id, logprob, top_ids, top_logprobs from logprobs "
                          f"where row_id = '{r['_id']}' order by position")
        assert "".join(p["token"] for p in pos) == r["solution"]  # multi-byte characters and emoji too
        ids = [p["token_id"] for p in pos]
        assert ids == tok(r["solution"], add_special_tokens=False)["input_ids"]
        assert all(len(p["top_ids"]) == 5 and p["top_logprobs"] == sorted(p["top_logprobs"], reverse=True)
                   for p in pos)
        assert all(p["logprob"] <= p["top_logprobs"][0] + 1 / 1024 for p in pos)
        assert all(p["logprob"] == pytest.approx(p["top_logprobs"][p["top_ids"].index(p["token_id"])], abs=1 / 16)
                   for p in pos if p["token_id"] in p["top_ids"])


def test_the_scores_are_the_models_own_log_probabilities(scored, bundled_model_path):
    """One row read again here with a plain forward pass over the same template: the stored numbers match."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, _ = scored
    row = query(spec, "select _id, question, solution from read where question like 'A pen%'")[0]
    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    model = AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval()
    head = tok.apply_chat_template([{"role": "system", "content": "Solve the problem."},
                                    {"role": "user", "content": row["question"]}], add_generation_prompt=True)
    head = list(head["input_ids"] if hasattr(head, "keys") else head)
    ids = tok(row["solution"], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = model(torch.tensor([head + ids])).logits[0, len(head) - 1:-1].float().log_softmax(-1)
    want = lp.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1).tolist()
    top_lp, top_ids = lp.topk(5, -1)
    got = query(spec, f"select logprob, top_ids, top_logprobs from logprobs where row_id = '{row['_id']}' "
                      "order by position")
    assert [g["logprob"] for g in got] == pytest.approx(want, abs=1 / 2048 + 1e-4)
    # the best exactly; the rest as a set (their order among near-ties is the codes' resolution)
    assert [g["top_ids"][0] for g in got] == top_ids[:, 0].tolist()
    assert [sorted(g["top_ids"]) for g in got] == [sorted(t) for t in top_ids.tolist()]
    assert [g["top_logprobs"][0] for g in got] == pytest.approx(top_lp[:, 0].tolist(), abs=1 / 2048 + 1e-4)


def test_a_re_run_sends_nothing_and_kd_trains_on_the_scored_rows(scored):
    spec, first = scored
    again = run(spec)
    step = next(s for s in again.steps if s.step == "read")
    assert step.generated == 0 and step.cached == 5
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "train", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = query(spec, "select objective, status from train_runs")
    assert runs == [{"objective": "kd", "status": "done"}]
    assert "teacher top-k matched" in out.stdout + out.stderr


@pytest.mark.parametrize("change, key, words", [
    ("    logprobs: 5\n", "steps.0", "set `logprobs`"),
    ("    response: answer\n", "steps.0.response", "`nope` is not a column of `people`"),
])
def test_a_score_steps_mistakes_name_the_key(tmp_path, change, key, words):
    spec = write_spec(tmp_path)
    text = spec.read_text()
    text = text.replace(change, "" if "logprobs" in change else "    response: nope\n")
    spec.write_text(text)
    with pytest.raises(UserError) as err:
        from datagen.api import validate

        validate(spec)
    assert key in str(err.value) and words in str(err.value)


def test_a_teacher_that_cannot_score_is_refused_at_validation(tmp_path):
    spec = write_spec(tmp_path)
    text = spec.read_text().replace(
        'small: {backend: transformers, model: "bundled:smollm2-135m-instruct"}',
        "small: {backend: openai, base_url: 'http://127.0.0.1:9/v1', model: m, batch: {enabled: true}}")
    spec.write_text(text)
    with pytest.raises(UserError, match="returns none"):
        from datagen.api import validate

        validate(spec)
    assert load_spec(spec).spec.steps[0].strategy == "score"
