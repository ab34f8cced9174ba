"""Training rows for multi-turn conversations and agent trajectories: the loss on every assistant turn, the user
and tool turns masked.

A row is tokenized here, not by TRL: the whole conversation through the student's chat template, and each assistant
turn's tokens found as what rendering the conversation up to and including it adds to rendering it up to that turn
with the generation prompt. TRL's SFTTrainer then builds the labels from the `assistant_masks` column. This works with
any template that renders a conversation as a growing prefix (the usual ones do), without `{% generation %}`
markers; one that does not is refused, naming the fix.

An agent's rows carry their tools. A student whose template renders tools (it reads `tools`) gets them as they are;
any other is refused unless `train.tools_in_prompt: true`, which writes the tools into the system prompt and the
calls and results into the turns as in-process teachers see them (datagen/teachers/toolcalls.py), so the student
learns the form the bundled model was prompted with.
"""

from __future__ import annotations

import json

from datagen.errors import UserError
from datagen.teachers.toolcalls import fallback_messages, template_messages, template_renders_tools


def tokenize_rows(records: list[dict], tok, settings) -> list[dict]:
    """{input_ids, assistant_masks} for each {prompt, completion, tools?} record (the whole conversation)."""
    out = []
    for rec in records:
        tools = rec.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) and tools else tools or None
        out.append(tokenize(rec["prompt"] + rec["completion"], tools, tok, settings))
    return out


def tokenize(messages: list[dict], tools: list[dict] | None, tok, settings) -> dict:
    has_tools = bool(tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if has_tools and settings.tools_in_prompt:
        messages, extra = fallback_messages(messages, tools), {}
    elif has_tools and not template_renders_tools(tok):
        raise UserError(
            "these rows are agent trajectories with tools, and the student's chat template cannot render tools (it "
            "never reads `tools`); set `train.chat_template` to a template that does (Qwen2.5's, Llama 3.1's), train "
            "a student whose template does, or set `train.tools_in_prompt: true` to write the tools into the system "
            "prompt and the calls into the turns as the in-process teachers saw them")
    else:
        messages, extra = template_messages(messages, tools, tok)
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    ids = _render(tok, messages, extra, generation=False)
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], extra, generation=True)
        through = _render(tok, messages[: i + 1], extra, generation=False)
        if ids[: len(through)] != through or through[: len(before)] != before:
            raise UserError("the student's chat template does not render a conversation as a growing prefix, so "
                            "its assistant turns cannot be found for the loss; set `train.chat_template` to one "
                            "that does")
        for j in range(len(before), len(through)):
            mask[j] = 1
    return {"input_ids": ids, "assistant_masks": mask}


def _render(tok, messages: list[dict], extra: dict, generation: bool) -> list[int]:
    if not messages:
        return []
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation, **extra)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)
