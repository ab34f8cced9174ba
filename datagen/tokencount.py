"""Counting a chat prompt's tokens with a local model's own tokenizer and chat template, without torch.

transformers' AutoTokenizer imports torch (7 s here), which `datagen validate` must not; the `tokenizers` library
reads the same tokenizer.json, and the chat template is Jinja, rendered as transformers renders it
(`apply_chat_template`: sandboxed, trim_blocks and lstrip_blocks, the generation prompt added, and the rendered
text tokenized without special tokens, as vLLM does for chat requests).
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable

Counter = Callable[[list[dict]], int]


def local_counter(folder: Path | None) -> Counter | None:
    """A function from chat messages to prompt tokens, or None when the folder has no tokenizer and template."""
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    config = _read_json(folder / "tokenizer_config.json")
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
    if not isinstance(template, str):
        return None
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda v, **kw: json.dumps(v, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = _raise
    compiled = env.from_string(template)
    specials = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}

    def count(messages: list[dict]) -> int:
        text = compiled.render(messages=messages, add_generation_prompt=True, **specials)
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _token_text(value) -> str:
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def _raise(message: str):
    raise ValueError(message)
