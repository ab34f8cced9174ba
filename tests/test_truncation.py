"""The truncation rule (issue 30): the default `init: truncate` keeps the first and the last layer, and the untrained
truncated bundled student reads human-written text better than a uniform guess over its vocabulary (ln V nats per
token), which the earlier default (every other layer, dropping the last) did not. Hidden-state distillation maps the
last student layer to the last teacher layer and compares normalised states."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from sft.model import default_keep, truncate_layers

ROOT = Path(__file__).resolve().parent.parent
OLD_DEFAULT = list(range(0, 30, 2))  # before issue 30: 0, 2, ..., 28


@pytest.fixture(scope="module")
def bundled(bundled_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    return AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32).eval(), tok


def references(n: int = 8) -> list[dict]:
    """GSM8K training solutions (human-written, specs/data) as prompt/completion records."""
    with (ROOT / "specs" / "data" / "gsm8k_train_500.jsonl").open() as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh)]
    return [{"prompt": [{"role": "user", "content": r["question"]}],
             "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows]


def test_default_keeps_half_with_the_first_and_the_last():
    assert default_keep(30) == [0, 1, 2, 3, 4] + list(range(20, 30))
    for n in (3, 4, 6, 12, 24, 30, 32, 40):
        keep = default_keep(n)
        assert keep[0] == 0 and keep[-1] == n - 1 and len(keep) == (n + 1) // 2 == len(set(keep))
        assert keep == sorted(keep)
    assert default_keep(1) == [0] and default_keep(2) == [0, 1]


def test_untrained_truncated_student_reads_references_below_ln_v(bundled):
    """Mean NLL per token of GSM8K solutions: the default truncation below ln V, the old one above it (so this
    test can fail), the whole model far below both."""
    from sft.evaluate import token_loss

    model, tok = bundled
    ln_v = math.log(model.config.vocab_size)
    records = references()
    losses = {}
    for name, keep in (("default", None), ("old", OLD_DEFAULT)):
        student = copy.deepcopy(model)
        kept = truncate_layers(student, keep)
        assert len(kept) == 15
        losses[name] = token_loss(student, tok, records, 512, 8)[0]
        del student
    assert losses["default"] < ln_v - 2, losses  # measured 5.9
    assert losses["old"] > ln_v, losses  # measured 12.7


def test_hidden_pairs_end_last_to_last_on_normalised_states(bundled):
    """`layers: auto` on the default truncation pairs the last student layer with the teacher's last, and with
    `norm: final` (the default) the states compared at that pair are exactly what the untrained student's head reads
    (the final norm of its last layer's output); `rms` leaves the cosine loss as it was without a norm."""
    from datagen.spec.models import HiddenSpec
    from sft.hidden import HiddenDistiller, catch_outputs, layer_pairs, normaliser

    model, tok = bundled
    assert HiddenSpec().norm == "final"
    pairs = layer_pairs(HiddenSpec(), "truncate", None, 15, 30, True)
    assert pairs[-1] == (14, 29) and pairs[0] == (0, 0)
    student = copy.deepcopy(model)
    truncate_layers(student, None)
    inputs = tok(["What is 12 plus 30?", "Add 7 and 5. It is 12."], return_tensors="pt", padding=True)
    with torch.no_grad(), catch_outputs(student, [14]) as caught:
        out = student(**inputs, output_hidden_states=True, use_cache=False)
    final = normaliser("final", model)
    assert torch.allclose(final(caught[14]), out.hidden_states[-1], atol=1e-5)
    with torch.no_grad(), catch_outputs(student, [s for s, _ in pairs]) as caught:
        student(**inputs, use_cache=False)
        h = {(norm, kind): float(HiddenDistiller(model, pairs, kind, 1.0, None, normaliser(norm, model)).loss(
            caught, dict(inputs))) for norm in ("none", "rms", "final") for kind in ("cosine", "mse")}
    assert h["rms", "cosine"] == pytest.approx(h["none", "cosine"], abs=1e-5)  # cosine ignores the scale
    assert h["final", "cosine"] != pytest.approx(h["none", "cosine"], abs=1e-3)  # the norm's gains weigh dimensions
    assert 0 < h["final", "cosine"] < 2
    assert h["rms", "mse"] < h["none", "mse"] / 10  # the raw residual stream is far larger than unit RMS
