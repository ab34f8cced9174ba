"""For `objective: kd`: how close the student is to the teacher's stored distribution on the held-out teacher rows.

- `kd_kl`: the mean over matched answer positions of KL(teacher || student), both restricted to the teacher's stored
  top-k ids and renormalised there, at temperature 1 whatever `kd.temperature` trained with (so runs with different
  settings compare); the same quantity as the D of the loss at T = 1 (sft/kd.py). Blind to how much mass the student
  puts on those ids (a student that keeps the teacher's spread among them but puts its mass elsewhere scores 0).
- `kd_kl_tail`: the same KL over k + 1 classes, the teacher's k ids and "anything else" (the D of `kd.tail: true` at
  T = 1), which sees that mass; read it beside `kd_kl`.
- `kd_top1`: the share of those positions where the student's most likely token (over its whole vocabulary) is the
  teacher's most likely one.
- `kd_positions`: how many positions that is (positions the byte-offset alignment matched, as in training).
"""

from __future__ import annotations


def kd_metrics(model, tok, records: list[dict], stored: dict, k: int, token_map=None,
               max_length: int = 1024, batch_size: int = 8) -> dict:
    """records: held-out {prompt, completion, row}; stored: row id -> its soft labels (sft.rows.load_logprobs)."""
    import torch

    from sft import kd
    from sft.evaluate import completion_ids, padded_batches

    aligner = kd.Aligner(tok)
    encoded = [completion_ids(tok, r["prompt"], r["completion"], max_length) for r in records]
    targets = [kd.teacher_targets(stored.get(r["row"]["_id"]), token_map) for r in records]
    kl_sum, tail_sum, agree, positions = 0.0, 0.0, 0, 0
    for first, labels, logits in padded_batches(model, tok, encoded, batch_size):
        ids = torch.full((*labels.shape, k), -1, dtype=torch.long)
        lps = torch.zeros((*labels.shape, k), dtype=torch.float32)
        rest = torch.full(labels.shape, float("nan"))
        for row in range(labels.shape[0]):
            full, start = encoded[first + row]
            fill_targets(ids[row], lps[row], rest[row], aligner, full, start, targets[first + row], k)
        ids, lps, rest = ids.to(logits.device), lps.to(logits.device), rest.to(logits.device)
        s = kd.shifted(logits, labels, ids, lps, rest)  # one log_softmax over the vocabulary for both KLs
        kl, n = kd.top_k_divergence(s, temperature=1.0)
        kl_tail, _ = kd.top_k_divergence(s, temperature=1.0, tail=True)
        kl_sum, tail_sum, positions = kl_sum + float(kl) * n, tail_sum + float(kl_tail) * n, positions + n
        agree += top1_agreements(logits, ids, lps)
    if not positions:
        return {"kd_positions": 0}
    return {"kd_kl": kl_sum / positions, "kd_kl_tail": tail_sum / positions, "kd_top1": agree / positions,
            "kd_positions": positions}


def fill_targets(ids, lps, rest, aligner, full: list[int], start: int, target, k: int) -> None:
    """One row's teacher top-k placed at the completion positions the aligner matched (the collator's layout)."""
    import numpy as np

    from sft.kd import place

    where = np.arange(start, len(full))
    place(ids, lps, rest, aligner, where, np.asarray(full, np.int64)[start:], target, k)


def top1_agreements(logits, ids, lps) -> int:
    """Positions (with teacher data) where the student's argmax is the teacher's top-1; logits at t predict t + 1."""
    student = logits[:, :-1].argmax(-1)
    ids, lps = ids[:, 1:], lps[:, 1:]
    has = (ids >= 0).any(-1)
    best = lps.masked_fill(ids < 0, float("-inf")).argmax(-1, keepdim=True)
    teacher = ids.gather(-1, best).squeeze(-1)
    return int(((student == teacher) & has).sum())
