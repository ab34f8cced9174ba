"""Budget forcing on the real vLLM engine through `datagen sample`'s code, loading a student folder written by
`save_student`. The forcing is the teachers' (datagen/teachers/thinking.py); test_reasoning_vllm.py drives the same code
while generating data."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from datagen.errors import UserError
from datagen.teachers.thinking import ThinkingBudget
from sft.sample import check_thinking_budget, open_engine, sample


@pytest.fixture(scope="module")
def student(tmp_path_factory, bundled_model_path):
    """A student folder as `datagen train` writes it (float32 safetensors, tokenizer, datagen_train.json)."""
    from sft.model import load_student, save_student
    from datagen.spec.models import TrainSpec

    model, tok = load_student(TrainSpec(), None)
    return str(save_student(model, tok, tmp_path_factory.mktemp("sample") / "student", {"test": True}))


@pytest.fixture(scope="module")
def engine(student):
    eng = open_engine("vllm", student, max_model_len=1024)
    yield eng
    eng.close()


def test_max_thinking_tokens_ends_reasoning(engine, student):
    tok = AutoTokenizer.from_pretrained(student)
    prompts = [[{"role": "user", "content": "Explain in detail why the sky is blue."}],
               [{"role": "user", "content": "Write a long story about a cat."}]]
    replies = sample(engine, tok, prompts, ThinkingBudget(max_thinking_tokens=8, max_tokens=12))
    for r in replies:
        # the bundled model never writes </think>, so only the budget can have ended its reasoning
        assert len(tok.encode(r.reasoning, add_special_tokens=False)) <= 8
        assert r.thinking_tokens == 8 and r.waits == 0
        assert r.text.startswith("<think>") and f"{r.reasoning}</think>{r.answer}" in r.text
        assert r.answer.strip()  # the answer came after the forced end


def test_min_thinking_tokens_appends_wait(engine, student):
    tok = AutoTokenizer.from_pretrained(student)
    prompts = [[{"role": "user", "content": "What is 2 plus 2? Reply in one short sentence."}]]
    # a period ends the reasoning here (markers are settable), so the model ends early and must be made to go on
    budget = ThinkingBudget(min_thinking_tokens=30, max_thinking_tokens=60, end=".", wait="Wait", max_tokens=8)
    (reply,) = sample(engine, tok, prompts, budget)
    assert reply.waits >= 1 and "Wait" in reply.reasoning
    assert 30 <= reply.thinking_tokens <= 60
    assert len(tok.encode(reply.reasoning, add_special_tokens=False)) >= 30
    # without the minimum the same prompt stops at its first period, well short of 30 tokens
    (plain,) = sample(engine, tok, prompts, ThinkingBudget(max_thinking_tokens=60, end=".", max_tokens=8))
    assert plain.waits == 0 and plain.thinking_tokens < 30


def test_budget_checks():
    with pytest.raises(UserError, match="must not exceed"):
        check_thinking_budget(ThinkingBudget(min_thinking_tokens=10, max_thinking_tokens=5))
    with pytest.raises(UserError, match="at least 1"):
        check_thinking_budget(ThinkingBudget(max_thinking_tokens=0))
