"""Scoring a model on held-out rows: mean token loss on the teacher's outputs, and accuracy where a verifier applies.

- loss: the mean negative log-likelihood per completion token of the teacher's text, given the prompt, tokenized as
  TRL tokenizes prompt/completion rows for training (so it is the same quantity training lowers);
- accuracy: the model answers each held-out prompt (greedy, up to `eval.max_new_tokens` tokens), and the spec's own
  `verify_math` / `verify_code` filters on the output column judge the answers; the share judged correct.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Verifier:
    label: str  # e.g. verify_math(solution)
    spec: object  # the curation filter entry


def verifiers(loaded, output_column: str) -> list[Verifier]:
    """The spec's verifying filters that judge the training rows' output column."""
    curation = loaded.spec.curation
    found = []
    for f in (curation.filters if curation is not None else []):
        if f.type in ("verify_math", "verify_code") and f.column == output_column:
            found.append(Verifier(f"{f.type}({f.column})", f))
    return found


def chat_ids(tok, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if hasattr(ids, "keys"):  # newer tokenizers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def completion_ids(tok, prompt: list[dict], completion: list[dict], max_length: int) -> tuple[list[int], int]:
    """The whole conversation's ids and where the completion starts (where prompt and prompt+completion diverge,
    as TRL does), truncated to max_length."""
    prompt_ids = chat_ids(tok, prompt, add_generation_prompt=True)
    full = chat_ids(tok, prompt + completion)
    start = 0
    while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
        start += 1
    return full[:max_length], start


def token_loss(model, tok, records: list[dict], max_length: int = 1024, batch_size: int = 8) -> tuple[float, int]:
    """Mean loss per completion token over the records, and the number of tokens scored."""
    per_record = record_losses(model, tok, records, max_length, batch_size)
    total, count = sum(t for t, _ in per_record), sum(n for _, n in per_record)
    return (total / count if count else float("nan")), count


def model_device(model):
    """Where the model's weights are: every tensor sft builds for it goes there (on a GPU run, cuda)."""
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def padded_batches(model, tok, encoded: list[tuple[list[int], int]], batch_size: int):
    """(first index, labels, logits) per batch of (ids, completion start) pairs, right-padded, on the model's
    device: labels are the ids, -100 outside the completions; logits (float32) at t predict the label at t + 1."""
    import torch

    device = model_device(model)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i: i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (ids, start) in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                labels[row, start: len(ids)] = torch.tensor(ids[start:], dtype=torch.long)
            input_ids, labels, attention = input_ids.to(device), labels.to(device), attention.to(device)
            logits = model(input_ids=input_ids, attention_mask=attention).logits
            yield i, labels, logits.float()


def record_losses(model, tok, records: list[dict], max_length: int = 1024,
                  batch_size: int = 8) -> list[tuple[float, int]]:
    """Per record: the summed loss over its completion tokens, and how many tokens that is."""
    import torch

    encoded = [completion_ids(tok, r["prompt"], r["completion"], max_length) for r in records]
    out: list[tuple[float, int]] = []
    for _, labels, logits in padded_batches(model, tok, encoded, batch_size):
        target = labels[:, 1:]
        mask = target != -100
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target.clamp(min=0),
                                                reduction="none")
        out += [(float(t), int(n)) for t, n in zip((nll * mask).sum(dim=1), mask.sum(dim=1))]
    return out


def generate_answers(model, tok, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding."""
    import torch

    side = tok.padding_side
    tok.padding_side = "left"
    answers = []
    model.eval()
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                     for p in prompts[i: i + batch_size]]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model_device(model))
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                     top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
            answers += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    return answers


def accuracy(model, tok, records: list[dict], checks: list[Verifier], output_column: str, max_new_tokens: int,
             spec_dir=None) -> dict[str, float]:
    """verifier label -> share of held-out prompts whose generated answer the verifier accepts."""
    if not checks or not records:
        return {}
    from curation.filters import apply_filter

    answers = generate_answers(model, tok, [r["prompt"] for r in records], max_new_tokens)
    rows = [{**r["row"], output_column: a} for r, a in zip(records, answers)]
    return {c.label: sum(v.kept for v in apply_filter(c.spec, rows, spec_dir)) / len(rows) for c in checks}


def evaluate(model, tok, records: list[dict], checks: list[Verifier], output_column: str, max_length: int,
             max_new_tokens: int, batch_size: int = 8, spec_dir=None) -> dict:
    """Every metric on the held-out records: loss, tokens and, per verifier, accuracy (plus their mean)."""
    if not records:
        return {}
    loss, tokens = token_loss(model, tok, records, max_length, batch_size)
    metrics: dict = {"loss": loss, "eval_tokens": tokens}
    acc = accuracy(model, tok, records, checks, output_column, max_new_tokens, spec_dir)
    if acc:
        metrics["accuracy"] = sum(acc.values()) / len(acc)
        metrics["accuracy_by_verifier"] = acc
    return metrics
