"""What `datagen train` scores before and after training, as one function of the model.

- always, on the held-out training rows (`eval.split`): `loss` and `accuracy` (sft/evaluate.py);
- with `eval.source`: the same on the source's reference answers, as `reference_*` (sft/eval_source.py);
- when the trained step kept logprobs (always for `kd`, and for `sft` on such rows, so the two compare): `kd_kl`
  and `kd_top1` to the teacher's stored top-k on the held-out rows (sft/kd_eval.py);
- `objective: dpo`: `preference_accuracy` and `logp_margin` on the held-out pairs (sft/dpo.py).

Everything a score needs from the store is read once, before training, so a missing source fails early.
"""

from __future__ import annotations

from collections.abc import Callable


def scorer(loaded, plan, settings, tok, rows, checks, eval_kwargs: dict) -> Callable[[object], dict]:
    """model -> every metric, merged into one dict."""
    from sft.evaluate import evaluate

    if settings.eval is not None and settings.eval.verify == "none":
        checks = []  # no accuracy: no greedy generation, which is most of the scoring time
    parts = [lambda model: evaluate(model, tok, rows.eval, checks, **eval_kwargs)]
    if settings.eval is not None and settings.eval.source is not None:
        parts.append(source_part(loaded, plan, tok, rows, checks, eval_kwargs))
    if settings.objective != "dpo" and rows.eval and rows.step is not None and plan.step(rows.step).spec.logprobs:
        parts.append(kd_part(loaded, plan, settings, tok, rows))  # for sft too, so the two compare
    if settings.objective == "dpo":
        from sft.dpo import preference_metrics

        parts.append(lambda model: preference_metrics(model, tok, rows.eval, settings.max_length,
                                                      settings.batch_size))

    def score(model) -> dict:
        out: dict = {}
        for part in parts:
            out |= part(model)
        return out

    return score


def source_part(loaded, plan, tok, rows, checks, eval_kwargs: dict):
    from sft import eval_source

    spec = loaded.spec.train.eval
    if rows.step is None:  # a source of gold answers: its eval rows are put the way its training rows are
        records = eval_source.template_records(loaded, plan, loaded.spec.train)
    else:
        records = eval_source.source_records(loaded, plan, rows.step, rows.train)
    columns = list(records[0]["row"])
    on_source = eval_source.source_verifiers(checks, spec.reference, columns)
    if spec.verify == "math" and not any(c.spec.type == "verify_math" for c in on_source):
        on_source.append(eval_source.math_verifier(rows.output_column, spec.reference))
    return lambda model: eval_source.evaluate_source(model, tok, records, on_source, spec.source, **eval_kwargs)


def kd_part(loaded, plan, settings, tok, rows):
    from sft import kd
    from sft.kd_eval import kd_metrics
    from sft.rows import load_logprobs

    stored = load_logprobs(loaded, [r["row"]["_id"] for r in rows.eval])
    token_map = None
    if any((labels.token_ids < 0).any() for labels in stored.values()):
        token_map = kd.TokenMap(tok)
    k = plan.step(rows.step).spec.logprobs
    return lambda model: kd_metrics(model, tok, rows.eval, stored, k, token_map, settings.max_length,
                                    settings.batch_size)
