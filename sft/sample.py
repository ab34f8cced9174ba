"""`datagen sample`: answer prompts with a model (a student folder, a bundled model), with s1's budget forcing.

The reply starts inside a reasoning block and its trace is bounded as `--max-thinking-tokens` / `--min-thinking-tokens`
say. The budget forcing itself is the teachers' (datagen/teachers/thinking.py), the same code that bounds traces while
generating data (`thinking:` on a step): this command hands the prompts to an in-process teacher (`vllm`, the default,
or `transformers`) with that budget and prints the traces and answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from datagen.errors import UserError
from datagen.teachers.thinking import ThinkingBudget


def check_thinking_budget(budget: ThinkingBudget) -> None:
    """The command line's budget, checked with the names of its options."""
    lo, hi = budget.min_thinking_tokens, budget.max_thinking_tokens
    for name, v in (("--min-thinking-tokens", lo), ("--max-thinking-tokens", hi), ("--max-tokens", budget.max_tokens)):
        if v is not None and v < 1:
            raise UserError(f"{name} must be at least 1, got {v}")
    if lo is not None and hi is not None and lo > hi:
        raise UserError(f"--min-thinking-tokens ({lo}) must not exceed --max-thinking-tokens ({hi})")
    if not budget.end:
        raise UserError("the end-of-reasoning marker must not be empty (--think-end)")


@dataclass
class Reply:
    prompt: str
    reasoning: str
    answer: str
    thinking_tokens: int
    waits: int
    answer_tokens: int = 0
    rounds: int = 0
    text: str = field(default="")


def open_engine(kind: str, path: str, seed: int = 0, max_model_len: int = 4096):
    """The in-process teacher that answers (its engine starts on the first prompt)."""
    if kind == "vllm":
        from datagen.teachers.vllm_teacher import VLLMTeacher

        return VLLMTeacher("sample", path, {"max_model_len": max_model_len, "seed": seed})
    if kind == "transformers":
        import torch

        from datagen.teachers.transformers_teacher import TransformersTeacher

        return TransformersTeacher("sample", path, device="cuda" if torch.cuda.is_available() else "cpu")
    raise UserError(f"--engine must be vllm or transformers, got {kind!r}")


def sample(teacher, tok, prompts: list[list[dict]], budget: ThinkingBudget, temperature: float = 0.0) -> list[Reply]:
    """Answer chat prompts with reasoning bounded as `budget` says (datagen/teachers/thinking.py)."""
    from datagen.reasoning import Markers
    from datagen.teachers.base import GenOptions, GenRequest, Sampling, generate_all

    check_thinking_budget(budget)
    options = GenOptions(Sampling(temperature=temperature, max_tokens=budget.max_tokens),
                         reasoning=Markers(budget.start, budget.end), thinking=budget)
    results = generate_all(teacher, [GenRequest(m, [str(i)], [0]) for i, m in enumerate(prompts)], options)
    replies = []
    for chat, (s,) in zip(prompts, results):
        if s.error is not None:
            raise UserError(f"the model could not answer {chat[-1]['content'][:60]!r}: {s.error}")
        trace = s.reasoning
        replies.append(Reply(chat[-1]["content"], trace.text, s.text, trace.tokens, trace.waits,
                             len(tok.encode(s.text, add_special_tokens=False)), trace.phases,
                             f"{budget.start}{trace.text}{budget.end}{s.text}"))
    return replies


def resolve_target(target: str) -> str:
    """A model folder, a `bundled:` name, or a spec file (its `train.output`)."""
    from datagen.bundled import resolve_model

    path = Path(target)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        from datagen.spec.load import load_spec
        from sft.train import output_dir

        loaded = load_spec(path)
        if loaded.spec.train is None:
            raise UserError(f"{path} has no `train:` block, so it names no student; pass a model folder")
        folder = output_dir(loaded)
        if not (folder / "config.json").exists():
            raise UserError(f"no trained student at {folder}; run `datagen train {path}` first")
        return str(folder)
    return resolve_model(target, Path.cwd())


def as_dict(reply: Reply) -> dict:
    return asdict(reply)


def read_prompts(prompts: list[str], file: Path | None, system: str | None) -> list[list[dict]]:
    """Chat messages from --prompt texts and a JSONL file (`prompt`: text, or `messages`: a chat)."""
    import json

    chats = [[{"role": "user", "content": p}] for p in prompts]
    if file is not None:
        if not file.is_file():
            raise UserError(f"--file: {file} not found")
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{file}:{n}: not JSON ({exc.msg})") from None
            if isinstance(row, dict) and isinstance(row.get("messages"), list):
                chats.append(row["messages"])
            elif isinstance(row, dict) and isinstance(row.get("prompt"), str):
                chats.append([{"role": "user", "content": row["prompt"]}])
            else:
                raise UserError(f"{file}:{n}: each line needs a `prompt` (text) or `messages` (a chat)")
    if not chats:
        raise UserError("nothing to answer: give --prompt TEXT (repeatable) or --file prompts.jsonl")
    if system:
        chats = [[{"role": "system", "content": system}] + c for c in chats]
    return chats
