"""`logprobs_mode: processed` (issue 17): the teacher's soft labels from the distribution the text was sampled from
(after temperature, top-k and top-p) instead of the model's raw one. Checks, errors and keys without an engine; one
in-process vLLM run through the CLI for what the store keeps."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import api
from datagen.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = ROOT / "specs" / "data" / "gsm8k_train_500.jsonl"

TEACHERS = """\
teachers:
  small:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    sampling: {temperature: 1.0, top_p: 0.5, max_tokens: 16}
    engine: {enforce_eager: true, max_model_len: 1024, kv_cache_gb: 1}
  remote: {backend: openai, model: m, base_url: "http://127.0.0.1:9/v1"}
sources:
  problems: {path: problems.jsonl}
"""


def write(tmp_path: Path, steps: str, rows: int = 3) -> Path:
    (tmp_path / "problems.jsonl").write_text("\n".join(PROBLEMS.read_text().splitlines()[:rows]) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: lp\n" + TEACHERS + "steps:\n" + steps)
    return spec


STEP = '  - {{name: {name}, strategy: label, teacher: {teacher}, input: problems, prompt: "{{{{ question }}}}", ' \
       'output: {name}_out{extra}}}\n'


def step(name: str, teacher: str = "small", extra: str = "") -> str:
    return STEP.format(name=name, teacher=teacher, extra=", " + extra if extra else "")


@pytest.mark.parametrize("steps, message", [
    (step("a", extra="logprobs_mode: processed"), "add `logprobs: K`"),
    (step("a", "remote", "logprobs: 5, logprobs_mode: processed"), "--logprobs-mode processed_logprobs"),
    (step("a", extra="logprobs: 5") + step("b", extra="logprobs: 5, logprobs_mode: processed"),
     "one engine keeps one kind"),
])
def test_errors_name_the_key_and_the_fix(tmp_path, steps, message):
    with pytest.raises(UserError) as err:
        api.plan(api.open_spec(write(tmp_path, steps)))
    assert message in str(err.value) and "logprobs_mode" in str(err.value)


def test_raw_keys_do_not_change_and_processed_ones_do():
    from datagen.keys import logprobs_key

    class Step:
        logprobs, logprobs_mode = 5, "raw"

    assert logprobs_key(Step) == 5  # what the key held before logprobs_mode existed
    Step.logprobs_mode = "processed"
    assert logprobs_key(Step) == [5, "processed"]
    Step.logprobs = None
    assert logprobs_key(Step) is None


def test_vllm_keeps_the_nucleus_renormalised(tmp_path):
    spec = write(tmp_path, step("a", extra="logprobs: 20, logprobs_mode: processed"))
    run = subprocess.run([sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "query", str(spec), "--format", "json",
                          "select top_logprobs from logprobs"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    positions = [r["top_logprobs"] for r in json.loads(out.stdout)]
    assert len(positions) >= 3
    for top in positions:  # top_p 0.5 keeps a few tokens; their processed probabilities sum to 1
        assert 1 <= len(top) < 20 and all(math.isfinite(lp) for lp in top)
        # each stored entry is within 1/32 nat (the best within 1/2048): the sum within e^(1/32) - 1 of 1
        assert abs(sum(math.exp(lp) for lp in top) - 1) < math.exp(1 / 32) - 1
