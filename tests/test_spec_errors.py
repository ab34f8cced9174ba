"""Malformed specs: each error names the key path and the YAML line (and column), and says what to change."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from datagen.errors import UserError
from datagen.spec.load import load_spec
from datagen.api import plan as build_plan

DATA = Path(__file__).parent / "data"

GOOD = """\
name: t
teachers:
  big:
    backend: openai
    base_url: http://127.0.0.1:9/v1
    model: m
    sampling: {temperature: 0.7, max_tokens: 64}
sources:
  problems:
    path: problems.jsonl
steps:
  - name: solve
    strategy: label
    teacher: big
    input: problems
    prompt: "{{ question }}"
    output: solution
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "problems.jsonl").write_text(
        '{"question": "What is 2+3?", "answer": "#### 5"}\n{"question": "What is 4*4?", "answer": "#### 16"}\n'
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return spec


def error_of(tmp_path: Path, text: str) -> str:
    spec = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        build_plan(load_spec(spec))
    return str(info.value)


def test_good_spec_plans(tmp_path):
    plan = build_plan(load_spec(write(tmp_path, GOOD)))
    assert [s.name for s in plan.steps] == ["solve"]
    assert plan.steps[0].columns[:3] == ["question", "answer", "solution"]


# (description, replace this, with that, substrings the message must contain)
CASES = [
    ("top_p out of range", "temperature: 0.7,", "temperature: 0.7, top_p: 1.5,",
     ["teachers.big.sampling.top_p", "(0, 1]", "got 1.5", "spec.yaml:7:"]),
    ("unknown key with suggestion", "    prompt:", "    promt: x\n    prompt:", ["steps.0.promt", "unknown key",
                                                                                "did you mean `prompt`", "spec.yaml:16:5"]),
    ("unknown top-level key", "name: t\n", "name: t\nsteds: []\n", ["steds", "unknown key", "spec.yaml:2:1"]),
    ("unknown backend", "backend: openai", "backend: ollama", ["teachers.big.backend", "ollama", "spec.yaml:4:"]),
    ("missing backend", "    backend: openai\n", "", ["teachers.big", "`backend` is required", "spec.yaml:3:"]),
    ("missing prompt", '    prompt: "{{ question }}"\n', "", ["steps.0.prompt", "required", "spec.yaml:12:"]),
    ("wrong type for n", "    output: solution", "    output: solution\n    n: many",
     ["steps.0.n", "integer", "spec.yaml:18:5"]),
    ("negative max_tokens", "max_tokens: 64", "max_tokens: -3", ["teachers.big.sampling.max_tokens", "spec.yaml:7:"]),
    ("unknown teacher", "    teacher: big", "    teacher: huge", ["steps.0.teacher", "no teacher named `huge`",
                                                                    "spec.yaml:14:5"]),
    ("unknown input", "    input: problems", "    input: problemz", ["steps.0.input", "`problemz` is not a source",
                                                                      "spec.yaml:15:5"]),
    ("undefined template variable", '"{{ question }}"', '"{{ questoin }}"',
     ["steps.0.prompt", "`questoin`", "answer, question", "spec.yaml:16:5"]),
    ("template syntax error", '"{{ question }}"', '"{{ question "', ["steps.0.prompt", "syntax error",
                                                                       "spec.yaml:16:5"]),
    ("missing source file", "path: problems.jsonl", "path: nope.jsonl", ["sources.problems.path", "not found",
                                                                           "spec.yaml:10:5"]),
    ("output clashes with inherited column", "output: solution", "output: answer",
     ["steps.0.output", "clashes", "spec.yaml:17:5"]),
    ("reserved step name", "  - name: solve", "  - name: select", ["steps.0.name", "reserved SQL word",
                                                                    "spec.yaml:12:5"]),
    ("store name as step name", "  - name: solve", "  - name: requests", ["steps.0.name", "taken by the store"]),
    ("step reads a later step", "    input: problems", "    input: later",
     ["steps.0.input", "spec.yaml:15:5"]),
    ("judge of a source", "strategy: label", "strategy: judge\n    rubric: r", ["steps.0.input",
                                                                                 "earlier generation step"]),
    ("dpo without pairs", "name: t\n", "name: t\ntrain: {objective: dpo}\n",
     ["train.objective", "trains on preference pairs", "`solve` builds none", "spec.yaml:2:"]),
    ("kd without stored logprobs", "name: t\n", "name: t\ntrain: {objective: kd}\n",
     ["train.objective", "logprobs", "solve"]),
    ("train input unknown", "name: t\n", "name: t\ntrain: {input: nope}\n", ["train.input", "`nope`"]),
    ("keep_layers without truncate", "name: t\n", "name: t\ntrain: {keep_layers: [0, 2]}\n",
     ["train", "init: truncate"]),
    ("kd temperature not positive", "name: t\n", "name: t\ntrain: {objective: kd, kd: {temperature: 0}}\n",
     ["train.kd.temperature", "greater than 0"]),
    ("api key written in the spec", "    model: m\n", "    model: m\n    api_key_env: sk-abc123\n",
     ["teachers.big.api_key_env", "NAME of an environment variable"]),
    ("base url without scheme", "base_url: http://127.0.0.1:9/v1", "base_url: 127.0.0.1:9",
     ["teachers.big.base_url", "http://"]),
    ("duplicate key", "    output: solution", "    output: solution\n    output: other",
     ["steps.0.output", "duplicate key", "spec.yaml:18:5"]),
    ("bad yaml indentation", "    input: problems\n", "    input: problems\n   bad: [\n",
     ["malformed YAML", "spec.yaml:"]),
    ("structured output on transformers", "    output: solution",
     "    output: solution\n    response_format: {json_schema: {type: object, properties: {a: {type: integer}}}}",
     ["steps.0.response_format", "vllm"]),
    ("demos column missing", "    output: solution", "    output: solution\n    demos: {from: problems, k: 1, as: turns, "
                                                       "assistant: solutionz}",
     ["steps.0.demos.assistant", "`solutionz` is not a column", "spec.yaml:18:"]),
    ("turns without assistant", "    output: solution", "    output: solution\n    demos: {from: problems, as: turns}",
     ["steps.0.demos", "need `assistant`", "spec.yaml:18:5"]),
    ("query source that does not run", "sources:\n", "sources:\n  hard:\n    query: select nope from problems\n",
     ["sources.hard.query", "does not run", "spec.yaml:10:5"]),
    ("logprobs out of range", "    output: solution", "    output: solution\n    logprobs: 50",
     ["steps.0.logprobs", "spec.yaml:18:5"]),
]


@pytest.mark.parametrize("desc,old,new,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec(tmp_path, desc, old, new, expected):
    assert old in GOOD, f"test case {desc!r} does not apply to the base spec"
    text = GOOD.replace(old, new, 1)
    if desc == "structured output on transformers":
        text = text.replace("backend: openai", "backend: transformers").replace(
            "    base_url: http://127.0.0.1:9/v1\n", "")
    if desc == "step reads a later step":
        text += "  - name: later\n    strategy: label\n    teacher: big\n    input: problems\n    prompt: x\n"
    message = error_of(tmp_path, text)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_empty_and_non_mapping_specs(tmp_path):
    assert "empty" in error_of(tmp_path, "")
    assert "mapping" in error_of(tmp_path, "- a\n- b\n")


def test_malformed_source_line_names_file_and_line(tmp_path):
    spec = write(tmp_path, GOOD)
    (tmp_path / "problems.jsonl").write_text('{"question": "a"}\n{"question": oops}\n')
    with pytest.raises(UserError) as info:
        build_plan(load_spec(spec))
    assert "problems.jsonl:2" in str(info.value) and "sources.problems" in str(info.value)


def test_validate_imports_no_torch_or_vllm(tmp_path):
    """`datagen validate` must stay light: a plan is checked without torch, vllm or transformers loaded."""
    import subprocess

    spec = write(tmp_path, GOOD)
    code = ("import sys; from datagen.cli import main\n"
            "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, timeout=120)
    assert "ok: the spec is valid" in out.stdout, out.stderr
    assert "HEAVY []" in out.stdout


VLLM = GOOD.replace("    backend: openai\n    base_url: http://127.0.0.1:9/v1\n    model: m\n",
                    "    backend: vllm\n    model: bundled:smollm2-135m-instruct\n    engine: {ENGINE}\n")


@pytest.mark.parametrize("engine,code,parts", [
    ("{data_parallel_size: 2}", 2, ["teachers.big.engine.data_parallel_size", "got 2", "replicas", "--ray",
                                    "tensor_parallel_size", "spec.yaml:6:"]),
    ("{tensor_parallel_size: 2, data_parallel_size: 1}", 0, ["ok: the spec is valid"]),
])
def test_in_process_vllm_refuses_data_parallel(tmp_path, engine, code, parts):
    """One in-process engine cannot be data-parallel: `datagen validate` says to use replicas, and exits 2."""
    import subprocess

    assert "{ENGINE}" in VLLM
    spec = write(tmp_path, VLLM.replace("{ENGINE}", engine))
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "validate", str(spec)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    for part in parts:
        assert part in out.stdout + out.stderr, f"{part!r} not in {out.stdout + out.stderr!r}"
