"""Bad input through the real CLI: every malformed spec, file, template or option gives one message that names what
to change, exit code 2 and no traceback. The cases of test_spec_errors.py run here through the CLI too; the spec
loader is fuzzed with hypothesis (any document gives a valid plan or a UserError, never another exception)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from datagen.cli import app
from datagen.errors import UserError
from datagen.spec.load import load_spec_text
from datagen.api import plan as build_plan
from tests.test_spec_errors import CASES, GOOD

OPENAI = "    backend: openai\n    base_url: http://127.0.0.1:9/v1\n    model: m\n"
TEACHER = OPENAI + "    sampling: {temperature: 0.7, max_tokens: 64}\n"
STEPS = GOOD[GOOD.index("steps:"):]
VLLM = "    backend: vllm\n    model: bundled:smollm2-135m-instruct\n"
BOMB = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9) if b else ', '.join('x' * 9)}]\n"
               for a, b in zip("abcdefgh", ["", *"abcdefg"]))

# (description, replace this in GOOD, with that, substrings of the message, extra files {name: text or bytes})
EXTRA = [
    # YAML itself
    ("tab indentation", "    model: m\n", "\tmodel: m\n", ["malformed YAML", "spec.yaml:6:"], {}),
    ("unclosed quote", 'prompt: "{{ question }}"', 'prompt: "{{ question }}', ["malformed YAML", "spec.yaml:"], {}),
    ("unclosed flow mapping", "max_tokens: 64}", "max_tokens: 64", ["malformed YAML", "spec.yaml:"], {}),
    ("list as a key", "name: t\n", "name: t\n[a, b]: 1\n", ["a key must be a plain name", "spec.yaml:2:1"], {}),
    ("two YAML documents", "name: t\n", "name: t\n---\nname: u\n", ["malformed YAML", "single document"], {}),
    ("alias bomb", GOOD, BOMB, ["expands to more than", "aliases"], {}),
    # wrong types and values
    ("name is a number", "name: t\n", "name: 123\n", ["name: Input should be a valid string", "spec.yaml:1:1"], {}),
    ("name with a slash", "name: t\n", "name: a/b\n", ["name 'a/b' must be letters, digits"], {}),
    ("teachers is a list", GOOD, "name: t\nteachers: [a, b]\n" + STEPS, ["teachers: Input should be a valid "
                                                                        "dictionary", "spec.yaml:2:1"], {}),
    ("steps is a mapping", "steps:\n  - name: solve", "steps:\n  first:\n    name: solve",
     ["steps: Input should be a valid list", "spec.yaml:11:1"], {}),
    ("temperature is text", "temperature: 0.7", "temperature: hot",
     ["teachers.big.sampling.temperature", "valid number", "'hot'", "spec.yaml:7:"], {}),
    ("n is zero", "    output: solution", "    output: solution\n    n: 0",
     ["steps.0.n", "greater than or equal to 1", "spec.yaml:18:5"], {}),
    ("max_failure_rate over 1", "    output: solution", "    output: solution\n    max_failure_rate: 1.5",
     ["steps.0.max_failure_rate", "less than or equal to 1", "spec.yaml:18:5"], {}),
    ("stop is a string", "max_tokens: 64}", "max_tokens: 64, stop: '###'}",
     ["teachers.big.sampling.stop", "valid list"], {}),
    ("requests_per_minute zero", "    model: m\n", "    model: m\n    requests_per_minute: 0\n",
     ["teachers.big.requests_per_minute", "greater than or equal to 1", "spec.yaml:7:5"], {}),
    ("negative timeout", "    model: m\n", "    model: m\n    timeout_s: -1\n", ["teachers.big.timeout_s",
                                                                               "greater than 0"], {}),
    ("seed is text", "name: t\n", "name: t\nseed: abc\n", ["seed", "valid integer", "spec.yaml:2:1"], {}),
    ("source limit zero", "    path: problems.jsonl", "    path: problems.jsonl\n    limit: 0",
     ["sources.problems.limit", "greater than or equal to 1"], {}),
    ("source with path and inline", "    path: problems.jsonl", "    path: problems.jsonl\n    inline: [{q: a}]",
     ["sources.problems", "exactly one of path, inline, query or dataset"], {}),
    ("empty inline source", "    path: problems.jsonl", "    inline: []", ["sources.problems", "at least one row"], {}),
    ("no teachers", "teachers:\n  big:\n" + TEACHER, "teachers: {}\n", ["teachers", "at least one teacher"], {}),
    ("no steps", STEPS, "steps: []\n", ["without steps", "curation"], {}),
    ("engine dtype unknown", OPENAI, VLLM + "    engine: {dtype: float8}\n",
     ["teachers.big.engine.dtype", "'float8'"], {}),
    ("response_format not an object schema", "    output: solution",
     "    output: solution\n    response_format: {json_schema: {type: string}}",
     ["steps.0.response_format.json_schema", "object schema"], {}),
    # unknown keys and keys of another backend
    ("misspelled sampling key", "temperature: 0.7,", "temprature: 0.7,",
     ["teachers.big.sampling.temprature", "did you mean `temperature`"], {}),
    ("engine on an openai teacher", "    model: m\n", "    model: m\n    engine: {enforce_eager: true}\n",
     ["teachers.big.engine", "unknown key `engine`"], {}),
    ("api_key_env on a vllm teacher", OPENAI, VLLM + "    api_key_env: KEY\n",
     ["teachers.big.api_key_env", "unknown key"], {}),
    # missing and malformed files
    ("missing model folder", OPENAI, "    backend: vllm\n    model: ./no-such-model\n",
     ["teachers.big.model", "does not exist", "spec.yaml:5:5"], {}),
    ("unknown bundled model", OPENAI, "    backend: transformers\n    model: bundled:gpt-9\n",
     ["teachers.big.model", "unknown bundled model"], {}),
    ("source of unknown type", "path: problems.jsonl", "path: problems.txt",
     ["sources.problems", "unknown source type '.txt'"], {"problems.txt": "question\n"}),
    ("empty source file", "path: problems.jsonl", "path: empty.jsonl", ["sources.problems", "no rows"],
     {"empty.jsonl": "\n"}),
    ("source line not JSON", "", "", ["sources.problems", "problems.jsonl:2", "malformed JSON line"],
     {"problems.jsonl": '{"question": "a"}\n{"question": "b",}\n'}),
    ("source line not an object", "", "", ["problems.jsonl:1", "must be a JSON object, got list"],
     {"problems.jsonl": '["question", "a"]\n'}),
    ("source not UTF-8", "", "", ["problems.jsonl", "not UTF-8"], {"problems.jsonl": b'{"question": "caf\xe9"}\n'}),
    ("json source not an array", "path: problems.jsonl", "path: p.json", ["p.json", "array of objects"],
     {"p.json": '{"question": "a"}'}),
    ("csv line with extra fields", "path: problems.jsonl", "path: p.csv", ["p.csv:3", "more fields than the header"],
     {"p.csv": "question\na\nb,c\n"}),
    ("parquet source that is not parquet", "path: problems.jsonl", "path: p.parquet",
     ["p.parquet", "not a readable Parquet file"], {"p.parquet": "not parquet"}),
    # templates
    ("system template undefined variable", "    output: solution", "    output: solution\n    system: 'You are {{ persona }}'",
     ["steps.0.system", "`persona`", "spec.yaml:18:5"], {}),
    ("demos used without demos", '"{{ question }}"', '"{% for d in demos %}{{ d.question }}{% endfor %}"',
     ["steps.0.prompt", "`demos`"], {}),
    ("template filter unknown", '"{{ question }}"', '"{{ question | shout }}"', ["steps.0.prompt", "shout"], {}),
    # impossible combinations
    ("logprobs zero", "    output: solution", "    output: solution\n    logprobs: 0", ["steps.0.logprobs"], {}),
    ("schema property clashes with output", "    output: solution", "    output: solution\n    response_format: "
     "{json_schema: {type: object, properties: {solution: {type: string}}}}", ["steps.0", "solution"], {}),
    ("demos from an unknown source", "    output: solution", "    output: solution\n    demos: {from: nowhere}",
     ["steps.0.demos.from", "`nowhere` is not a source"], {}),
    ("query source that writes", "sources:\n", "sources:\n  hard:\n    query: delete from problems\n",
     ["sources.hard.query"], {}),
]

ALL = [(d, o, n, e, {}) for d, o, n, e in CASES] + EXTRA


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_user_error(result, expected: list[str]) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    message = result.stderr
    assert message.startswith("error: ") and message.count("error: ") == 1, message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def make_spec(tmp_path: Path, desc: str, old: str, new: str, files: dict) -> Path:
    (tmp_path / "problems.jsonl").write_text('{"question": "What is 2+3?", "answer": "#### 5"}\n'
                                             '{"question": "What is 4*4?", "answer": "#### 16"}\n')
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert old in GOOD, f"case {desc!r} does not apply to the base spec"
    text = GOOD.replace(old, new, 1) if old else GOOD
    if desc == "structured output on transformers":
        text = text.replace("backend: openai", "backend: transformers").replace(
            "    base_url: http://127.0.0.1:9/v1\n", "")
    if desc == "step reads a later step":
        text += "  - name: later\n    strategy: label\n    teacher: big\n    input: problems\n    prompt: x\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    return spec


def test_at_least_40_malformed_inputs():
    assert len(ALL) + len(RUN_CASES) + 6 >= 40  # 6: the file and option cases below


@pytest.mark.parametrize("desc,old,new,expected,files", ALL, ids=[c[0] for c in ALL])
def test_malformed_spec_via_cli(tmp_path, desc, old, new, expected, files):
    assert_user_error(cli("validate", str(make_spec(tmp_path, desc, old, new, files))), expected)


# found only when templates are rendered on rows (validate renders the prompts of steps on sources for its cost
# estimate) or the environment is read; always exit 2 before any request is sent
RUN_CASES = [
    ("attribute missing on the row", '"{{ question }}"', '"{{ question.text }}"',
     ["steps.0", "fails on the row", "has no attribute 'text'"]),
    ("sandbox refuses internals", '"{{ question }}"', '"{{ question.__class__.__mro__ }}"',
     ["steps.0", "refused by the sandbox", "__class__"]),
    ("sandbox refuses calls into python", '"{{ question }}"', '"{{ cycler.__init__.__globals__ }}"',
     ["steps.0", "refused by the sandbox"]),
    ("api key variable not set", "    model: m\n", "    model: m\n    api_key_env: DATAGEN_TEST_UNSET_KEY\n",
     ["teachers.big.api_key_env", "DATAGEN_TEST_UNSET_KEY is not set"]),
]


@pytest.mark.parametrize("desc,old,new,expected", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_malformed_at_run_time(tmp_path, monkeypatch, desc, old, new, expected):
    monkeypatch.delenv("DATAGEN_TEST_UNSET_KEY", raising=False)
    spec = make_spec(tmp_path, desc, old, new, {})
    if "api key" in desc:
        assert cli("validate", str(spec)).exit_code == 0  # the plan cannot see it
    else:
        assert_user_error(cli("validate", str(spec)), expected)
    assert_user_error(cli("run", "-q", str(spec)), expected)


def test_spec_files_that_cannot_be_read(tmp_path):
    assert_user_error(cli("validate", str(tmp_path / "nope.yaml")), ["spec file not found", "nope.yaml"])
    assert_user_error(cli("validate", str(tmp_path)), ["cannot read spec file"])
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    assert_user_error(cli("validate", str(tmp_path / "latin1.yaml")), ["cannot read spec file", "latin1.yaml"])


def test_bad_command_options(tmp_path):
    spec = make_spec(tmp_path, "good", "", "", {})
    assert_user_error(cli("query", str(spec), "select 1", "--format", "xml"), ["--format must be table, json or csv"])
    assert_user_error(cli("query", str(spec), "select 1"), ["no store at", "datagen run"])
    assert_user_error(cli("query", str(tmp_path / "x.duckdb"), "select 1"), ["no store at"])


def test_a_real_process_prints_no_traceback(tmp_path):
    """The in-process runner above shares the CLI's code; one real process proves the same for the entry point."""
    spec = make_spec(tmp_path, "tab", "    model: m\n", "\tmodel: m\n", {})
    out = subprocess.run([sys.executable, "-m", "datagen.cli", "validate", str(spec)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: malformed YAML") and "Traceback" not in out.stderr


# --- fuzzing the loader --------------------------------------------------------------------------------------------

FUZZ_DIR = Path(tempfile.mkdtemp(prefix="datagen-fuzz-"))
(FUZZ_DIR / "problems.jsonl").write_text('{"question": "a", "answer": "b"}\n')
FUZZ_SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["openai", "vllm", "label", "problems", "solve", "big",
                                                     "{{ question }}", "{{ x }}", "bundled:smollm2-135m-instruct"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(["name", "backend", "model", "n"]),
                                        inner, max_size=3), max_leaves=12)


def plan_or_user_error(text: str) -> None:
    try:
        build_plan(load_spec_text(text, FUZZ_DIR / "spec.yaml"))
    except UserError as exc:
        assert str(exc).strip() and "Traceback" not in str(exc)


@FUZZ_SETTINGS
@given(values)
def test_fuzz_any_yaml_document(doc):
    plan_or_user_error(yaml.safe_dump(doc))


@FUZZ_SETTINGS
@given(st.text(max_size=300))
def test_fuzz_any_text(text):
    plan_or_user_error(text)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


GOOD_DOC = yaml.safe_load(GOOD)
GOOD_PATHS = [p for p in _paths(GOOD_DOC) if p]


@FUZZ_SETTINGS
@given(st.data())
def test_fuzz_mutations_of_a_good_spec(data):
    """Near-valid specs reach deep into validation and planning: replace, drop or add keys anywhere."""
    doc = json.loads(json.dumps(GOOD_DOC))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(GOOD_PATHS))
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = data.draw(st.sampled_from(["replace", "drop", "add"]))
            if action == "replace":
                parent[path[-1]] = data.draw(values)
            elif action == "drop" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict):
                parent[data.draw(st.text(max_size=8))] = data.draw(values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or retyped this path
    plan_or_user_error(yaml.safe_dump(doc, sort_keys=False))


@FUZZ_SETTINGS
@given(st.integers(0, len(GOOD) - 1), st.text(min_size=1, max_size=4))
def test_fuzz_character_edits_of_a_good_spec(pos, insert):
    plan_or_user_error(GOOD[:pos] + insert + GOOD[pos + 1:])


def teardown_module(module):
    shutil.rmtree(FUZZ_DIR, ignore_errors=True)


@pytest.mark.parametrize("where", ["teacher", "step"])
def test_a_penalty_transformers_cannot_apply_is_exit_2_at_validate_and_run(tmp_path, where):
    """transformers' generate has no presence or frequency penalty: the plan says so (it used to pass validate and
    fail the run as an internal error, exit 1)."""
    spec = make_spec(tmp_path, "good", "", "", {})
    text = spec.read_text().replace("backend: openai", "backend: transformers").replace(
        "    base_url: http://127.0.0.1:9/v1\n", "")
    if where == "teacher":
        text = text.replace("max_tokens: 64}", "max_tokens: 64, presence_penalty: 0.5}")
        expected = ["teachers.big.sampling.presence_penalty", "not supported by the transformers backend", "spec.yaml:"]
    else:
        text = text.replace("    output: solution", "    output: solution\n    sampling: {frequency_penalty: 0.2}")
        expected = ["steps.0.sampling.frequency_penalty", "not supported by the transformers backend", "spec.yaml:"]
    spec.write_text(text)
    assert_user_error(cli("validate", str(spec)), expected)
    assert_user_error(cli("run", "-q", str(spec)), expected)
