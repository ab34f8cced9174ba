"""sft/kd_eval.py on a real (truncated bundled) student, against teacher data built from that student's own
distribution, so that the right values are known: 0 where the teacher is the student, and for `kd_kl_tail` more than
0 where the teacher keeps the student's spread among its top k but puts all its mass there (which `kd_kl`, restricted
to those ids and renormalised, cannot see)."""

from __future__ import annotations

import math

import numpy as np
import torch

from datagen.store.soft_labels import SoftLabels

RECORDS = [{"prompt": [{"role": "user", "content": f"What is {a} plus {b}?"}],
            "completion": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}. #### {a + b}"}],
            "row": {"_id": f"r{a}"}} for a, b in [(2, 3), (4, 4)]]
K = 2


def own_topk(model, tok, renormalise: bool) -> tuple[dict, float]:
    """Stored teacher positions: at each completion token, the student's own top-K ids and log-probabilities (as
    they are, or renormalised over the K ids), and the mean mass the student puts on its top K."""
    from sft.evaluate import completion_ids

    stored, masses = {}, []
    for r in RECORDS:
        full, start = completion_ids(tok, r["prompt"], r["completion"], 64)
        with torch.no_grad():
            log_probs = model(torch.tensor([full])).logits[0].float().log_softmax(-1)
        ids, top_ids, top_lps = [], [], []
        for p in range(start, len(full)):  # the logits at p - 1 predict the token at p
            top = log_probs[p - 1].topk(K)
            lps = top.values - top.values.logsumexp(-1) if renormalise else top.values
            masses.append(float(top.values.exp().sum()))
            ids.append(full[p])
            top_ids.append(top.indices.tolist())
            top_lps.append(lps.tolist())
        # the floats as they are (the store's codes are tested in test_soft_labels.py); rest NaN: from the top k
        n = len(ids)
        stored[r["row"]["_id"]] = SoftLabels([""] * n, np.array(ids, np.int32), np.zeros(n, np.float32),
                                             np.array(top_ids, np.int32), np.array(top_lps, np.float32),
                                             np.full(n, np.nan, np.float32), None)
    return stored, sum(masses) / len(masses)


def test_a_teacher_that_is_the_student_scores_zero_on_both_kls(truncated_student):
    from sft.kd_eval import kd_metrics

    model, tok = truncated_student
    stored, _ = own_topk(model, tok, renormalise=False)
    m = kd_metrics(model, tok, RECORDS, stored, k=K, max_length=64, batch_size=2)
    assert m["kd_positions"] == sum(len(v) for v in stored.values())
    assert m["kd_kl"] < 1e-4 and m["kd_kl_tail"] < 1e-4, m
    assert m["kd_top1"] == 1.0


def test_the_tail_kl_sees_mass_the_student_puts_outside_the_teachers_top_k(truncated_student):
    """The teacher holds all its mass on the student's top 2 ids, in the student's proportions: the restricted KL
    cannot tell (0), the tail KL is the KL of "in the top 2 or not", known from the student's mass there."""
    from sft.kd_eval import kd_metrics

    model, tok = truncated_student
    stored, mass = own_topk(model, tok, renormalise=True)
    assert mass < 0.9  # the truncated student spreads its mass: the case is not degenerate
    m = kd_metrics(model, tok, RECORDS, stored, k=K, max_length=64, batch_size=2)
    assert m["kd_kl"] < 1e-4, m
    # teacher (1 - floor on "anything else") vs student (its mass q on the top 2): about -log q per position,
    # so the mean is at least -log of the mean mass (Jensen)
    assert m["kd_kl_tail"] > -math.log(mass) - 1e-3 > 0.1, (m, mass)
