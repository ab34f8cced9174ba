"""How tests/bench/distill_arith.py scores a student (issue 30): one function of a model, the same for every arm.

- Primary: exact-match accuracy on the test problems. The student answers each one greedily (up to
  `max_new_tokens`), with the system prompt the teacher had: by default through datagen's in-process vLLM teacher
  (`engine: vllm`, enforce_eager: about 30 s to start, then every problem at once), or transformers `generate`
  (`engine: transformers`, batched with left padding; several times slower on 2 cores for 500 answers);
  `arithmetic.correct` judges the final answer (verify_math's rule, exact integer). Kept per problem, so arms pair
  problem by problem (McNemar).
- Secondary: the NLL per token of the gold solutions (tests/bench/arithmetic.py writes them) at a temperature T*
  fitted on the calibration split: NLL(T) on the calibration problems over a log grid of T (0.4 to 4), refined by
  a parabola through the best three points; then the test problems' NLL at T* (and at T = 1). Temperature scaling
  takes out what only sharpens or smooths the distribution (the KD-versus-SFT confound of specs/results.md), so what
  is left is the rank the student gives the right tokens.
- Beside them, on the held-out teacher set (T = 1 samples with top-k logprobs, the same rows for every arm): the NLL
  of the teacher's samples and the KL to the teacher's top-k (sft/kd_eval.py).
"""

from __future__ import annotations

import math
import time

GRID = [0.4 * 10 ** (i / 24) for i in range(25)]  # 0.4 to 4, log-spaced


def chat(question: str, system: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def gold_records(problems: list[dict], system: str) -> list[dict]:
    return [{"prompt": chat(p["question"], system), "completion": [{"role": "assistant", "content": p["answer"]}]}
            for p in problems]


def vllm_answers(folder, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy answers through datagen's in-process vLLM teacher (started here, closed after)."""
    from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all
    from datagen.teachers.vllm_teacher import VLLMTeacher

    engine = VLLMTeacher("eval", str(folder), {"enforce_eager": True, "max_model_len": 1024, "kv_cache_gb": 1,
                                               "dtype": "float32", "seed": 0})
    try:
        results = generate_all(engine, [GenRequest(m, [str(i)], [0]) for i, m in enumerate(prompts)],
                               GenOptions(Sampling(temperature=0.0, max_tokens=max_new_tokens)))
    finally:
        engine.close()
    failed = [s.error for (s,) in results if s.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} greedy answers failed, the first: {failed[0]}")
    return [s.text for (s,) in results]


def accuracy(model, tok, problems: list[dict], system: str, max_new_tokens: int, batch: int,
             folder=None) -> dict:
    """Greedy answers to the problems, judged: {correct: [0/1 per problem], accuracy, answer_chars, samples};
    through vLLM when `folder` (the model's saved folder) is given, else transformers."""
    from sft.evaluate import generate_answers
    from tests.bench.arithmetic import correct

    order = sorted(range(len(problems)), key=lambda i: len(problems[i]["question"]))  # like lengths batch together
    prompts = [chat(problems[i]["question"], system) for i in order]
    answers = [""] * len(problems)
    if folder is not None:
        got = vllm_answers(folder, prompts, max_new_tokens)
    else:
        got = generate_answers(model, tok, prompts, max_new_tokens, batch)
    for i, text in zip(order, got):
        answers[i] = text
    right = [int(correct(a, p["result"])) for a, p in zip(answers, problems)]
    return {"correct": right, "accuracy": sum(right) / len(right),
            "answer_chars": sum(len(a) for a in answers) / len(answers), "samples": answers[:3]}


def nll_by_temperature(model, tok, records: list[dict], temps: list[float], max_length: int,
                       batch: int) -> tuple[list[float], int]:
    """Mean NLL per completion token at each temperature, and the number of tokens."""
    import torch

    from sft.evaluate import completion_ids, padded_batches

    encoded = [completion_ids(tok, r["prompt"], r["completion"], max_length) for r in records]
    sums, count = [0.0] * len(temps), 0
    for _, labels, logits in padded_batches(model, tok, encoded, batch):
        target = labels[:, 1:]
        mask = target != -100
        z = logits[:, :-1][mask]  # [positions, V]: only the completion's
        y = target[mask]
        gold = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        for i, t in enumerate(temps):
            sums[i] += float((torch.logsumexp(z / t, -1) - gold / t).sum())
        count += int(mask.sum())
    return [s / max(count, 1) for s in sums], count


def fit_temperature(model, tok, records: list[dict], max_length: int, batch: int) -> tuple[float, float]:
    """(T*, the calibration NLL at T*): the grid's best, refined by a parabola in log T through it and its
    neighbours (kept inside them)."""
    values, _ = nll_by_temperature(model, tok, records, GRID, max_length, batch)
    best = min(range(len(GRID)), key=values.__getitem__)
    if 0 < best < len(GRID) - 1:
        x = [math.log(GRID[best + d]) for d in (-1, 0, 1)]
        y = [values[best + d] for d in (-1, 0, 1)]
        denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
        a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / denom
        b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / denom
        if a > 0:
            t = math.exp(min(max(-b / (2 * a), x[0]), x[2]))
            refined, _ = nll_by_temperature(model, tok, records, [t], max_length, batch)
            if refined[0] <= values[best]:
                return t, refined[0]
    return GRID[best], values[best]


def held_metrics(model, tok, held: dict | None, max_length: int, batch: int) -> dict:
    """NLL of the held-out teacher samples and the KL to the teacher's stored top-k on them."""
    if not held:
        return {}
    from sft.evaluate import token_loss
    from sft.kd_eval import kd_metrics

    loss, tokens = token_loss(model, tok, held["records"], max_length, batch)
    kd = kd_metrics(model, tok, held["records"], held["stored"], held["k"], None, max_length, batch)
    return {"held_nll": loss, "held_tokens": tokens, **{k: kd[k] for k in ("kd_kl", "kd_kl_tail", "kd_top1")
                                                         if k in kd}}


def evaluate(model, tok, data: dict, settings: dict, folder=None) -> dict:
    """Every metric of the module doc. data: test, calib (problems), system, held (records/stored/k or None);
    settings: max_new_tokens, gen_batch, max_length, batch, engine (vllm needs the model's `folder`)."""
    started = time.perf_counter()
    model.eval()
    use = folder if settings.get("engine", "vllm") == "vllm" else None
    out = accuracy(model, tok, data["test"], data["system"], settings["max_new_tokens"], settings["gen_batch"], use)
    generated = time.perf_counter()
    t, calib = fit_temperature(model, tok, gold_records(data["calib"], data["system"]), settings["max_length"],
                               settings["batch"])
    (at_t, at_1), tokens = nll_by_temperature(model, tok, gold_records(data["test"], data["system"]), [t, 1.0],
                                              settings["max_length"], settings["batch"])
    out |= {"temperature": t, "calib_nll": calib, "gold_nll": at_t, "gold_nll_t1": at_1, "gold_tokens": tokens}
    out |= held_metrics(model, tok, data.get("held"), settings["max_length"], settings["batch"])
    out |= {"generate_seconds": generated - started, "eval_seconds": time.perf_counter() - started}
    return out
