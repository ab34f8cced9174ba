"""Tool calls in the text: the one form a teacher's tool calls are stored in, and the chat-template fallback.

Every backend's tool calls reach the store the same way, as the reply's text with each call written as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` after what the model said (the Hermes form Qwen's
templates use). An HTTP teacher's OpenAI `tool_calls` are written in that form (`calls_as_text`); an in-process
engine's model writes it itself. The agent strategy reads the calls back with `parse_calls`.

An in-process engine puts the conversation through the model's chat template. A template that renders tools (it
reads `tools`) gets the tools and the OpenAI-shape messages as they are. Any other (the bundled SmolLM2's) gets the
documented fallback, `fallback_messages`: the tools described in the system prompt with the call form above, each
assistant turn's calls written into its text, and tool results as a user turn holding `<tool_response>` blocks.
Training renders trajectories for a student the same two ways (sft/trajectories.py).
"""

from __future__ import annotations

import json
import re

CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
TOOLS_NOTE = (
    "You can call these tools. Their JSON schemas:\n<tools>\n{tools}\n</tools>\n"
    "To call a tool, write <tool_call>{{\"name\": \"TOOL\", \"arguments\": {{...}}}}</tool_call> and stop; the "
    "result comes back in <tool_response></tool_response>. When you know the final answer, write it without a "
    "tool call."
)


def calls_as_text(content: str | None, tool_calls: list[dict] | None) -> str:
    """An OpenAI reply's content and `tool_calls` as one text in the stored form."""
    parts = [content] if content else []
    for call in tool_calls or []:
        fn = call.get("function") or {}
        raw = fn.get("arguments")
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            arguments = raw  # kept as the model wrote it: the agent records it as a bad call
        parts.append("<tool_call>" + json.dumps({"name": fn.get("name"), "arguments": arguments}) + "</tool_call>")
    return "\n".join(parts)


def parse_calls(text: str) -> tuple[str, list[dict]]:
    """The text without its calls, and each call as {name, arguments, problem}: `arguments` a dict when it parsed,
    `problem` why the call cannot run (it did not parse, names no tool, or its arguments are not an object)."""
    calls = []
    for raw in CALL_RE.findall(text or ""):
        call: dict = {"name": None, "arguments": None, "raw": raw, "problem": None}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            call["problem"] = f"the tool call is not JSON ({exc.msg} at character {exc.pos})"
            calls.append(call)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            call["problem"] = 'a tool call must be {"name": TOOL, "arguments": {...}}'
        else:
            call["name"] = data["name"]
            arguments = data.get("arguments", data.get("parameters", {}))
            if isinstance(arguments, str):  # some models double-encode
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            if isinstance(arguments, dict):
                call["arguments"] = arguments
            else:
                call["problem"] = f"the arguments of `{data['name']}` are not a JSON object: {arguments!r}"[:300]
        calls.append(call)
    content = CALL_RE.sub("", text or "").strip()
    return content, calls


def template_renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads `tools` (then it gets them as they are)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    return "tools" in template


def template_messages(messages: list[dict], tools: list[dict] | None, tokenizer) -> tuple[list[dict], dict]:
    """The messages and extra `apply_chat_template` arguments for an in-process model: the tools as they are where
    its template renders them (arguments as objects, as HF templates expect), else the fallback."""
    if not tools and not any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        return messages, {}
    if template_renders_tools(tokenizer):
        return [_with_object_arguments(m) for m in messages], {"tools": tools or None}
    return fallback_messages(messages, tools), {}


def _with_object_arguments(message: dict) -> dict:
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        fn = dict(call.get("function") or {})
        if isinstance(fn.get("arguments"), str):
            try:
                fn["arguments"] = json.loads(fn["arguments"])
            except json.JSONDecodeError:
                pass
        calls.append({**call, "function": fn})
    return {**message, "tool_calls": calls}


def fallback_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Plain system/user/assistant turns any chat template renders: tools in the system prompt, calls in the
    assistant's text, consecutive tool results as one user turn of `<tool_response>` blocks."""
    out: list[dict] = []
    if tools:
        note = TOOLS_NOTE.format(tools="\n".join(json.dumps(t.get("function", t)) for t in tools))
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{note}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": note})
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            out.append({"role": "assistant", "content": calls_as_text(m.get("content"), m["tool_calls"])})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return [{k: v for k, v in m.items() if k != "_tool"} for m in out]
