"""Before training on reasoning traces: does the trace reach the tokens the student is trained on?

Chat templates of reasoning models differ in what they keep of an assistant turn: some strip everything before
`</think>` (DeepSeek-R1's), some render a `reasoning_content` field (Qwen3's), most ignore that field. Trained
through such a template, a student would silently learn the answers alone. So one training row is rendered with the
student's template exactly as TRL's SFTTrainer renders it (the prompt with the generation prompt, then prompt plus
completion; the loss falls on the tokens after their common prefix, cut at `max_length`), and training is refused,
with the fix, when the start of the trace is not among those tokens.
"""

from __future__ import annotations

from datagen.errors import UserError
from datagen.reasoning import trace_column

PROBE_CHARS = 40  # the start of the trace that must be found (whitespace-normalised) in the trained text


def check_trace_reaches(tok, rows, max_length: int) -> None:
    """Raise UserError when a row's trace would not be in the tokens the student trains on."""
    if rows.reasoning in (None, "drop"):
        return
    column = trace_column(rows.output_column)
    example = next((r for r in rows.train if (r["row"].get(column) or "").strip()), None)
    if example is None:
        return
    trained = trained_text(tok, example["prompt"], example["completion"], max_length)
    probe = _flat(example["row"][column])[:PROBE_CHARS]
    if probe in _flat(trained):
        return
    raise UserError(
        f"the student's chat template leaves the reasoning trace out of the tokens it trains on (export.reasoning: "
        f"{rows.reasoning}): a training row's completion renders as {trained[:160]!r}. "
        + _fix(rows.reasoning, tok.chat_template or ""))


def trained_text(tok, prompt: list[dict], completion: list[dict], max_length: int) -> str:
    """The text of the tokens the loss falls on, rendered as TRL's SFTTrainer renders a prompt/completion row."""
    prompt_ids = _ids(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    full_ids = _ids(tok.apply_chat_template(prompt + completion, tokenize=True))[:max_length]
    common = 0
    while common < min(len(prompt_ids), len(full_ids)) and prompt_ids[common] == full_ids[common]:
        common += 1
    return tok.decode(full_ids[common:], skip_special_tokens=False)


def _fix(form: str, template: str) -> str:
    keeps_field = "reasoning_content" in template
    if form == "field" and not keeps_field:
        return ("This template does not render `reasoning_content`; set `export.reasoning: inline` (the trace in "
                "the turn's text) or give the student a template that renders the field (`train.chat_template: "
                "FILE`).")
    options = "set `export.reasoning: field` (this template renders `reasoning_content`)" if keeps_field else \
        "give the student a chat template that keeps the trace in assistant turns (`train.chat_template: FILE`)"
    return (f"It strips the trace from assistant turns; {options}, or `export.reasoning: drop` to train on the "
            "answers alone. A row longer than `train.max_length` loses its completion too: raise it if the prompt "
            "is long.")


def _ids(encoded) -> list[int]:
    if hasattr(encoded, "keys"):  # newer tokenizers return a BatchEncoding
        encoded = encoded["input_ids"]
    return list(encoded)


def _flat(text: str) -> str:
    return " ".join(text.split())
