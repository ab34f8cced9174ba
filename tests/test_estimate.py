"""The plan's cost estimate: request counts from each strategy, prompt tokens counted with a local teacher's own
tokenizer (without importing torch), and the expected output taken from the samples already stored."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from datagen import api
from datagen.pipeline.estimate import describe_estimate, estimate
from datagen.spec.load import load_spec
from tests.scripted_server import ScriptedServer
from tests.test_run_scripted import make_spec, quiet_run, store_rows

CHAIN = """\
name: chain
teachers:
  t:
    backend: openai
    base_url: http://127.0.0.1:9/v1
    model: m
    price: {input: 0.5, output: 1.5}
    sampling: {max_tokens: 100}
sources:
  topics: {inline: [{topic: fractions}, {topic: ratios}, {topic: areas}]}
  seeds: {inline: [{task: Add two numbers.}, {task: Name a colour.}, {task: Sort three words.}]}
steps:
  - name: problems
    strategy: meta
    teacher: t
    meta: {topic: {from: topics, column: topic}, difficulty: [easy, hard]}
    per_combination: 2
    prompt: Write a {{ difficulty }} problem about {{ topic }}.
    output: question
  - name: solve
    strategy: label
    teacher: t
    input: problems
    prompt: "{{ question }}"
    n: 3
    output: solution
  - name: compare
    strategy: judge
    teacher: t
    input: solve
    rubric: Which answer is better?
    pairwise: true
    output: verdict
  - name: tasks
    strategy: expand
    teacher: t
    demos: {from: seeds, k: 2}
    prompt: "{% for d in demos %}{{ d.task }}\\n{% endfor %}Write one more task."
    target: 5
    batch: 3
    max_rounds: 4
    output: task
"""


def test_each_strategy_counts_its_requests_at_most(tmp_path):
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN)
    est = estimate(api.plan(load_spec(spec)))
    got = {x.step: (x.requests, x.prompt_basis, x.max_output_tokens) for x in est.lines}
    assert got == {
        "problems": (3 * 2 * 2, "estimated", 1200),  # 6 combinations x per_combination 2
        "solve": (12 * 3, "from earlier steps", 3600),  # every problem, 3 samples
        "compare": (12 * 3 * 2, "from earlier steps", 7200),  # 3 answers per problem: 3 pairs, both orders
        "tasks": (4 * 3, "estimated", 1200),  # max_rounds x min(batch, target)
    }
    problems = est.lines[0]
    # 12 prompts of about 7 words: a handful of tokens each, and the byte bound above the estimate
    assert 12 * 5 < problems.prompt_tokens < problems.max_prompt_tokens
    assert problems.worst_usd == pytest.approx((problems.max_prompt_tokens * 0.5 + 1200 * 1.5) / 1e6)


def test_a_local_teacher_counts_with_its_own_tokenizer_and_validate_never_imports_torch(tmp_path,
                                                                                         bundled_model_path):
    spec = make_spec(tmp_path, "http://127.0.0.1:9/v1")
    text = spec.read_text().replace("    backend: openai\n    base_url: http://127.0.0.1:9/v1\n    model: scripted\n"
                                    "    max_attempts: 2\n",
                                    "    backend: vllm\n    model: bundled:smollm2-135m-instruct\n"
                                    "    price: {input: 1, output: 1}\n")
    spec.write_text(text)
    loaded = load_spec(spec)
    line = estimate(api.plan(loaded)).lines[0]
    assert line.prompt_basis == "counted" and line.max_prompt_tokens == line.prompt_tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    prompts = source_prompts(loaded)
    expected = sum(len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"])
                   for m in prompts)
    assert line.prompt_tokens == expected * 2  # n: 2 samples each read the prompt
    probe = textwrap.dedent(f"""
        import sys
        from datagen.cli import main
        try:
            main(["validate", {str(spec)!r}])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        assert "torch" not in sys.modules, "validate imported torch"
        print("no torch")
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no torch" in out.stdout, out.stderr
    row = next(x for x in out.stdout.splitlines() if x.startswith("  solve "))
    assert "~" not in row and f"{line.prompt_tokens:,}" in row  # counted, not estimated


def test_expected_output_comes_from_the_stored_samples(tmp_path):
    with ScriptedServer(lambda body: "one two three four") as server:
        spec = make_spec(tmp_path, server.base_url, teacher_opts="    price: {input: 1, output: 1}\n")
        before = estimate(api.plan(load_spec(spec))).lines[0]
        quiet_run(spec)
    after = estimate(api.plan(load_spec(spec)))
    assert before.output_basis == "default" and before.expected_output_tokens == 12 * 20  # half of max_tokens 40
    assert after.lines[0].output_basis == "stored" and after.lines[0].expected_output_tokens == 12 * 4
    assert after.spent == pytest.approx(store_rows(spec, "select sum(cost_usd) from requests")[0][0])
    assert after.spent > 0


def source_prompts(loaded) -> list[list[dict]]:
    """The first step's prompts, rendered as the run renders them."""
    from datagen.pipeline.loop import teacher_setups
    from datagen.store.connection import open_scratch
    from datagen.store.views import sync_views
    from datagen.strategies.base import Job
    from datagen.strategies.label import known_prompts

    plan = api.plan(loaded)
    con = open_scratch()
    sync_views(con, plan.source_rows, plan.views)
    return known_prompts(Job(con, plan, plan.steps[0], teacher_setups(plan, plan.steps[0]), print))


def test_without_a_tokenizer_the_figure_is_about_and_the_worst_case_bound_holds(tmp_path, bundled_model_path):
    """chars/4 (`~`) can fall below what a real tokenizer counts (digits, other scripts), so it is shown as "about";
    the worst case uses the byte bound, which the bundled tokenizer never exceeds, on the same hard text."""
    from transformers import AutoTokenizer

    from datagen.pipeline.cost import guess_prompt_tokens, max_prompt_tokens

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    hard = [[{"role": "user", "content": "3.14159 2.71828 1.41421 " * 20}],
            [{"role": "system", "content": "Réponds en français, s'il te plaît."},
             {"role": "user", "content": "数学の問題を解いてください: 12 × 34 = ?"}]]
    for messages in hard:
        real = len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
        assert guess_prompt_tokens(messages) < real <= max_prompt_tokens(messages), messages
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN)
    text = describe_estimate(estimate(api.plan(load_spec(spec))))
    assert text.splitlines()[0].startswith("estimate (at most; `~`: about, counted without the teacher's tokenizer")
    total = next(x for x in text.splitlines() if x.startswith("  total "))
    assert "~" in total
