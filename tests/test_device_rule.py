"""The device rule in sft/: every tensor built for a model goes to the model's device (on a GPU run, cuda).

Held without a GPU: the model is wrapped so that it reports a device of its own (`meta`) while its weights stay on
the CPU, and `torch.Tensor.to` is patched so that a move to that device tags the tensor instead of moving it (a meta
tensor has no data to compute with). The wrapper refuses any tensor that did not go through such a move, so
removing one `.to(device)` from evaluation, KD scoring, DPO scoring or sampling fails this test.
"""

from __future__ import annotations

import math

import pytest
import torch

FAKE = torch.device("meta")


def _target(args, kwargs):
    device = kwargs.get("device", args[0] if args else None)
    if isinstance(device, (str, torch.device)):
        try:
            return torch.device(device)
        except RuntimeError:
            return None
    return None


@pytest.fixture
def fake_device(monkeypatch):
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if _target(args, kwargs) == FAKE:
            self._on_model_device = True
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)


class OnFakeDevice:
    """A real CPU model that says it lives on FAKE and checks that every tensor it is given was moved there."""

    def __init__(self, model):
        self.inner = model
        self.checked = 0

    @property
    def device(self):
        return FAKE

    def _check(self, args, kwargs):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, torch.Tensor):
                assert getattr(value, "_on_model_device", False), "a tensor was not moved to model.device"
                self.checked += 1

    def __call__(self, *args, **kwargs):
        self._check(args, kwargs)
        return self.inner(*args, **kwargs)

    def generate(self, *args, **kwargs):
        self._check(args, kwargs)
        return self.inner.generate(*args, **kwargs)

    def eval(self):
        self.inner.eval()
        return self

    def parameters(self):
        return self.inner.parameters()

    def __getattr__(self, name):  # generation_config and the like
        return getattr(self.inner, name)


RECORDS = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
            "completion": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}. #### {a + b}"}],
            "row": {"_id": f"r{a}", "answer": f"#### {a + b}", "_parent_id": f"p{a}"}} for a, b in [(2, 3), (4, 4)]]


def test_evaluation_moves_its_tensors_to_the_model_device(fake_device, truncated_student):
    from datagen.spec.curation_models import VerifyMathFilter
    from sft.evaluate import Verifier, evaluate

    model = OnFakeDevice(truncated_student[0])
    check = Verifier("verify_math(solution)", VerifyMathFilter(type="verify_math", column="solution",
                                                               reference="answer"))
    metrics = evaluate(model, truncated_student[1], RECORDS, [check], "solution", max_length=64, max_new_tokens=4,
                       batch_size=2)
    assert metrics["eval_tokens"] > 0 and math.isfinite(metrics["loss"]) and "accuracy" in metrics
    assert model.checked >= 4  # input ids and attention mask for the loss, and for generation


def test_kd_and_dpo_scores_move_their_tensors_to_the_model_device(fake_device, truncated_student):
    from sft.dpo import preference_metrics
    from sft.kd_eval import kd_metrics

    model, tok = OnFakeDevice(truncated_student[0]), truncated_student[1]
    from datagen.store import soft_labels
    from datagen.teachers.base import TokenLogprobs

    stored = {}
    for r in RECORDS:
        ids = tok(r["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        stored[r["row"]["_id"]] = soft_labels.decode(soft_labels.encode(
            r["row"]["_id"], [TokenLogprobs("", i, -0.1, ["", ""], [i, 0], [-0.1, -2.5]) for i in ids]))
    metrics = kd_metrics(model, tok, RECORDS, stored, k=2, max_length=64, batch_size=2)
    assert metrics["kd_positions"] > 0 and metrics["kd_kl"] >= 0
    pairs = [{**r, "chosen": r["completion"], "rejected": [{"role": "assistant", "content": "no idea"}]}
             for r in RECORDS]
    assert "preference_accuracy" in preference_metrics(model, tok, pairs, max_length=64, batch_size=2)
    assert model.checked >= 6


def test_sampling_moves_its_prompt_to_the_model_device(fake_device, truncated_student):
    """`datagen sample` and the transformers teacher generate through the same code (teachers/transformers_teacher.py):
    the same `model.device` rule."""
    from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all
    from datagen.teachers.transformers_teacher import TransformersTeacher

    teacher = TransformersTeacher("t", "unused")
    tok = truncated_student[1]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    teacher._model, teacher._tokenizer = OnFakeDevice(truncated_student[0]), tok
    ask = [GenRequest([{"role": "user", "content": "Hello"}], ["k"], [0])]
    [[sample]] = generate_all(teacher, ask, GenOptions(Sampling(temperature=0, max_tokens=3)))
    assert sample.error is None and isinstance(sample.text, str) and teacher._model.checked >= 1
