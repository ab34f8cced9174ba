"""TransformersTeacher on the bundled model: a few short requests (the first run converts the model, ~40 s, once)."""

from __future__ import annotations

import math

import pytest

from datagen.bundled import resolve_model
from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all
from datagen.teachers.transformers_teacher import TransformersTeacher


@pytest.fixture(scope="module")
def teacher():
    t = TransformersTeacher("student", resolve_model("bundled:smollm2-135m-instruct"))
    yield t
    t.close()


def ask(text: str, n: int = 1) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], keys=[f"{text}-{i}" for i in range(n)])


def test_samples_counts_and_logprobs(teacher):
    requests = [ask("What is 2+3?", n=2), ask("Name a fruit.")]
    out = generate_all(teacher, requests, GenOptions(Sampling(temperature=0.7, max_tokens=8, seed=1), logprobs=3))
    assert [len(samples) for samples in out] == [2, 1]
    for sample in (s for samples in out for s in samples):
        assert sample.error is None and sample.text
        assert sample.finish_reason in ("stop", "length")
        assert 0 < sample.completion_tokens <= 8
        assert sample.finish_reason == "stop" or sample.completion_tokens == 8
        assert sample.prompt_tokens > 10  # the chat template adds a default system prompt
        assert len(sample.logprobs) == sample.completion_tokens
        for pos in sample.logprobs:
            assert len(pos.top_ids) == len(pos.top_tokens) == len(pos.top_logprobs) == 3
            assert pos.top_logprobs == sorted(pos.top_logprobs, reverse=True)
            assert pos.logprob <= pos.top_logprobs[0] + 1e-5


def test_greedy_samples_agree_and_stop_strings_cut_the_text(teacher):
    options = GenOptions(Sampling(temperature=0, max_tokens=30, stop=["5"]))
    (a, b), = generate_all(teacher, [ask("Count from 1 to 10, comma separated.", n=2)], options)
    assert a.text == b.text
    assert "5" not in a.text and a.finish_reason == "stop"
    assert a.logprobs is None


def test_structured_output_is_refused(teacher):
    with pytest.raises(ValueError, match="structured output needs backend vllm or openai"):
        generate_all(teacher, [ask("hi")], GenOptions(Sampling(), json_schema={"type": "object"}))


def test_processed_logprobs_are_the_sampled_distribution(teacher):
    """Same seed, same tokens; raw logprobs are the model's (temperature 1), processed ones the distribution the
    text was sampled from: at temperature 0.5 every gap between two alternatives doubles, and top-p leaves only the
    nucleus, whose probabilities sum to 1."""
    sampling = Sampling(temperature=0.5, max_tokens=12, seed=3)
    req = [ask("Name three colours.")]
    (raw,), = generate_all(teacher, req, GenOptions(sampling, logprobs=5))
    (processed,), = generate_all(teacher, req, GenOptions(sampling, logprobs=5, logprobs_mode="processed"))
    assert raw.text == processed.text and len(raw.logprobs) == len(processed.logprobs) > 0
    for r, p in zip(raw.logprobs, processed.logprobs):
        assert r.top_ids == p.top_ids
        assert p.top_logprobs[0] >= r.top_logprobs[0]  # sharper
        for k in range(1, 5):
            assert abs((p.top_logprobs[0] - p.top_logprobs[k]) - 2 * (r.top_logprobs[0] - r.top_logprobs[k])) < 1e-3

    nucleus = Sampling(temperature=1.0, top_p=0.5, max_tokens=12, seed=3)
    (cut,), = generate_all(teacher, req, GenOptions(nucleus, logprobs=20, logprobs_mode="processed"))
    for pos in cut.logprobs:
        finite = [lp for lp in pos.top_logprobs if math.isfinite(lp)]
        assert 1 <= len(finite) < 20
        assert abs(sum(math.exp(lp) for lp in finite) - 1) < 1e-3
