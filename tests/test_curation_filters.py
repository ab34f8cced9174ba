"""Every filter kind on hand-made rows with known verdicts; math verification on real GSM8K answers; code
verification with a passing, a failing, a looping and a memory-hungry program; decontamination; spec errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from curation.decontaminate import benchmark_index, decontaminate
from curation.filters import apply_filter
from curation.filters.verify_code import network_isolated, run_program
from curation.filters.verify_math import extract_answer, last_boxed
from datagen.errors import UserError
from datagen.spec.curation_models import FilterSpec
from datagen.spec.load import load_spec_text
from datagen.api import plan as build_plan

DATA = Path(__file__).parent / "data"
adapter = TypeAdapter(FilterSpec)


def run(spec: dict, rows: list[dict]) -> list:
    return apply_filter(adapter.validate_python(spec), rows)


def kept(spec: dict, rows: list[dict]) -> list[bool]:
    return [v.kept for v in run(spec, rows)]


def test_truncated_drops_only_length_finish():
    rows = [{"_finish_reason": "stop"}, {"_finish_reason": "length"}, {"_finish_reason": None}]
    verdicts = run({"type": "truncated"}, rows)
    assert [v.kept for v in verdicts] == [True, False, True]
    assert "finish reason is `length`" in verdicts[1].reason


def test_regex_must_match_and_must_not_match():
    rows = [{"s": "so #### 42"}, {"s": "no answer here"}, {"s": "#### 7 As an AI language model"}]
    assert kept({"type": "regex", "column": "s", "must_match": r"####\s*-?[0-9]"}, rows) == [True, False, True]
    spec = {"type": "regex", "column": "s", "must_match": "####", "must_not_match": "as an ai", "ignore_case": True}
    verdicts = run(spec, rows)
    assert [v.kept for v in verdicts] == [True, False, False]
    assert "As an AI" in verdicts[2].reason


def test_repetition_flags_a_looping_generation():
    loop = "First add the apples. " + "and then we add the numbers " * 12
    prose = "Natalia sold 48 clips in April and half as many in May, so 24 in May and 72 altogether."
    verdicts = run({"type": "repetition", "column": "t", "ngram": 3, "max_share": 0.3}, [{"t": loop}, {"t": prose}])
    assert [v.kept for v in verdicts] == [False, True]
    assert verdicts[0].score > 0.7 and verdicts[1].score == 0.0


def test_score_bounds_and_missing_scores():
    rows = [{"g": 9}, {"g": "6.5"}, {"g": None}, {"g": "n/a"}, {"g": 7}]
    verdicts = run({"type": "score", "column": "g", "min": 7}, rows)
    assert [v.kept for v in verdicts] == [True, False, False, False, True]
    assert verdicts[1].score == 6.5 and "< min 7" in verdicts[1].reason
    assert kept({"type": "score", "column": "g", "min": 1, "max": 8}, rows) == [False, True, False, False, True]


def test_length_counts_tokens_of_the_student_tokenizer():
    from curation.filters.length import token_counts

    short, long_ = "Two plus three is five.", "word " * 300
    counts = token_counts([short, long_], "bundled:smollm2-135m-instruct")
    assert 4 <= counts[0] <= 10 and counts[1] >= 300  # real BPE counts, not characters
    verdicts = run({"type": "length", "column": "t", "min_tokens": 3, "max_tokens": 100},
                   [{"t": short}, {"t": long_}, {"t": ""}])
    assert [v.kept for v in verdicts] == [True, False, False]
    assert verdicts[0].score == counts[0] and "> max_tokens 100" in verdicts[1].reason


# --- verify_math -----------------------------------------------------------------------------------------------

def gsm8k() -> list[dict]:
    return [json.loads(line) for line in (DATA / "gsm8k_12.jsonl").read_text().splitlines()]


def final(answer: str) -> str:
    return answer.split("####")[-1].strip()


def test_extraction_order_hashes_then_boxed_then_last_number():
    assert extract_answer("so \\boxed{3} and 4\n#### 5") == "5"
    assert extract_answer("we get \\boxed{\\frac{1}{2}} after 7 steps") == "\\frac{1}{2}"
    assert extract_answer("3 apples and 4 pears make 7.") == "7"
    assert extract_answer("no digits") is None
    assert extract_answer("Answer: 12 (not 13)", r"Answer:\s*(\d+)") == "12"
    assert last_boxed("\\boxed{1} then \\boxed{{2}+1}") == "{2}+1"


def test_verify_math_on_real_gsm8k_answers():
    rows = gsm8k()
    gold = [{"solution": r["answer"], "answer": r["answer"]} for r in rows]
    assert all(kept({"type": "verify_math", "column": "solution", "reference": "answer"}, gold))
    # the same answers written other ways: boxed, a trailing number with units, thousands separators
    styled = []
    for i, r in enumerate(rows):
        x = final(r["answer"])
        text = [f"The answer is $\\boxed{{{x}}}$.", f"So the total is ${x} in the end.",
                f"#### {int(x):,}" if x.lstrip("-").isdigit() else f"#### {x}"][i % 3]
        styled.append({"solution": text, "answer": r["answer"]})
    assert all(kept({"type": "verify_math", "column": "solution", "reference": "answer"}, styled))
    wrong = [{"solution": f"#### {float(final(r['answer'])) + 1:g}", "answer": r["answer"]} for r in rows]
    verdicts = run({"type": "verify_math", "column": "solution", "reference": "answer"}, wrong)
    assert not any(v.kept for v in verdicts)
    assert re.match(r"answer \S+ != reference 72", verdicts[0].reason)


def test_verify_math_without_an_answer_is_dropped_with_a_reason():
    verdicts = run({"type": "verify_math", "column": "s", "reference": "a"},
                   [{"s": "I cannot solve this.", "a": "#### 4"}, {"s": "#### 4", "a": "no reference"}])
    assert (verdicts[0].kept, verdicts[0].reason) == (False, "no final answer found")
    assert verdicts[1].kept is False and "reference" in verdicts[1].reason


# --- verify_code -----------------------------------------------------------------------------------------------

CODE_ROWS = [
    {"code": "```python\ndef add(a, b):\n    return a + b\n```", "tests": "assert add(2, 3) == 5"},
    {"code": "def add(a, b):\n    return a - b", "tests": "assert add(2, 3) == 5, 'add(2, 3) should be 5'"},
    {"code": "def add(a, b):\n    while True:\n        pass", "tests": "add(1, 2)"},
    {"code": "def add(a, b):\n    x = [bytearray(10**7) for _ in range(1000)]\n    return a + b",
     "tests": "assert add(2, 3) == 5"},
]


def test_verify_code_passing_failing_looping_and_memory_hungry():
    spec = {"type": "verify_code", "column": "code", "tests": "tests", "timeout_s": 2, "memory_mb": 256}
    verdicts = run(spec, CODE_ROWS)
    assert [v.kept for v in verdicts] == [True, False, False, False]
    assert "add(2, 3) should be 5" in verdicts[1].reason
    assert "timed out" in verdicts[2].reason or "CPU" in verdicts[2].reason
    assert "memory" in verdicts[3].reason


def test_verify_code_runs_in_an_empty_temp_dir_without_network(tmp_path):
    (tmp_path / "secret.txt").write_text("x")
    probe = ("import os, socket\nassert os.listdir('.') == ['main.py'], os.listdir('.')\n"
             "assert 'HOME' not in os.environ and 'HTTPS_PROXY' not in os.environ\n")
    assert run_program(probe).passed
    assert network_isolated(), "`unshare -n` / `unshare -rn` must work here (util-linux; root or user namespaces)"
    net = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n"
    result = run_program(net)
    assert not result.passed and "unreachable" in result.reason.lower()


def test_verify_code_without_unshare_still_runs_and_says_so(monkeypatch):
    import curation.filters.verify_code as vc

    monkeypatch.setattr(vc.shutil, "which", lambda name: None)
    vc._unshare_prefix.cache_clear()
    try:
        assert not vc.network_isolated()
        assert run_program("print('ok')\n").passed and not run_program("raise SystemExit(3)\n").passed
    finally:
        vc._unshare_prefix.cache_clear()


# --- decontamination -------------------------------------------------------------------------------------------

def test_decontaminate_records_the_matching_ngram():
    bench = [("b1", "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.")]
    index = benchmark_index(bench, 8)
    texts = ["NATALIA sold clips to 48 of her friends in April; how many in May?",  # same 8 words, other case/punct
             "Natalia sold pens to 48 of her cousins in June."]
    verdicts = decontaminate(texts, index, 8, "benchmark")
    assert [v.kept for v in verdicts] == [False, True]
    assert "'natalia sold clips to 48 of her friends'" in verdicts[0].reason and "row b1" in verdicts[0].reason


# --- spec errors -----------------------------------------------------------------------------------------------

SPEC = """\
name: t
teachers:
  big: {backend: openai, base_url: "http://127.0.0.1:9/v1", model: m}
sources:
  items:
    inline:
      - {question: "q1", answer: "#### 1"}
  bench:
    inline:
      - {problem: "p"}
steps:
  - {name: solve, strategy: label, teacher: big, input: items, prompt: "{{ question }}", output: solution}
curation:
  input: solve
  filters:
    - {type: truncated}
    - {type: verify_math, column: solution, reference: answer}
  decontaminate: {against: bench, column: question, against_column: problem}
  dedup:
    - {type: minhash, column: question}
  select: {n: 1, diversity: {method: kcenter, column: question}}
"""

ERRORS = [
    ("unknown filter type", "{type: truncated}", "{type: truncate}", ["curation.filters.0.type", "truncate"]),
    ("missing type", "{type: truncated}", "{column: solution}", ["filter 0 needs `type`", "verify_math"]),
    ("unknown column", "reference: answer}", "reference: answr}",
     ["curation.filters.1.reference", "`answr` is not a column of `solve`", "spec.yaml:17:"]),
    ("bad regex", "{type: truncated}", "{type: regex, column: solution, must_match: '(['}",
     ["must_match is not a valid regular expression"]),
    ("against a step", "against: bench", "against: solve", ["curation.decontaminate.against", "not a source"]),
    ("benchmark column", "against_column: problem", "against_column: question",
     ["against_column", "not a column of source `bench`"]),
    ("unknown input", "  input: solve", "  input: nothing", ["curation.input", "`nothing` is not a source or a step"]),
    ("truncated on a source", "  input: solve", "  input: items", ["curation.filters.0", "needs a step's rows"]),
    ("kcenter without column", "{method: kcenter, column: question}", "{method: kcenter}",
     ["kcenter needs `column`"]),
    ("unknown key", "{type: minhash, column: question}", "{type: minhash, column: question, treshold: 0.5}",
     ["treshold", "unknown key"]),
    ("unknown bundled model", "{method: kcenter, column: question}",
     "{method: kcenter, column: question, model: 'bundled:nope'}", ["unknown bundled model"]),
]


def test_a_good_curation_block_plans(tmp_path):
    plan = build_plan(load_spec_text(SPEC, tmp_path / "spec.yaml"))
    assert plan.spec.curation.dedup[0].threshold == 0.8 and plan.spec.curation.select.diversity.pool == 4.0


@pytest.mark.parametrize("name,old,new,expected", ERRORS, ids=[e[0] for e in ERRORS])
def test_curation_spec_errors_say_what_to_set(tmp_path, name, old, new, expected):
    assert old in SPEC
    with pytest.raises(UserError) as info:
        build_plan(load_spec_text(SPEC.replace(old, new, 1), tmp_path / "spec.yaml"))
    for part in expected:
        assert part in str(info.value), str(info.value)
