"""`datagen sample`: answer prompts with a model (a student folder, a bundled model), with s1's budget forcing.

The reply starts inside a reasoning block (the chat prompt is followed by the start marker, `<think>` by default).
Reasoning is generated in rounds until it ends:
- `max_thinking_tokens` N: a round may use only what is left of N; when N is reached the reasoning is cut there
  (never more than N tokens, counted with the model's tokenizer) and the end marker is appended;
- `min_thinking_tokens` M: when the model ends its reasoning early (writes the end marker or ends its turn) before M
  tokens, the end is dropped and the wait word ("Wait") is appended, so the model keeps thinking; repeated until M;
- then the end marker is appended and the answer is generated (up to `max_tokens`).

Engines: `vllm` (in-process; the default) or `transformers`. Both get token ids, so the prompt is exactly what the
budget was counted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from datagen.errors import UserError


@dataclass
class Budget:
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    start: str = "<think>"
    end: str = "</think>"
    wait: str = "Wait"
    max_tokens: int = 256  # the answer's budget (and a round's, when there is no maximum)

    def check(self) -> None:
        lo, hi = self.min_thinking_tokens, self.max_thinking_tokens
        for name, v in (("--min-thinking-tokens", lo), ("--max-thinking-tokens", hi), ("--max-tokens",
                                                                                       self.max_tokens)):
            if v is not None and v < 1:
                raise UserError(f"{name} must be at least 1, got {v}")
        if lo is not None and hi is not None and lo > hi:
            raise UserError(f"--min-thinking-tokens ({lo}) must not exceed --max-thinking-tokens ({hi})")
        if not self.end:
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


# --- engines: token ids in, (text, finished_early) out ----------------------------------------------------------


class VLLMEngine:
    def __init__(self, path: str, temperature: float, max_model_len: int = 4096, seed: int = 0):
        from datagen.teachers.vllm_teacher import VLLMTeacher

        self.teacher = VLLMTeacher("sample", path, {"max_model_len": max_model_len, "seed": seed})
        self.temperature = temperature

    def complete(self, prompts: list[list[int]], max_tokens: list[int], stop: list[str]) -> list[tuple[str, bool]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self.teacher.llm()
        params = [SamplingParams(temperature=self.temperature, max_tokens=m, stop=stop or None) for m in max_tokens]
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [(o.outputs[0].text, o.outputs[0].finish_reason != "length") for o in outs]

    def close(self) -> None:
        self.teacher.close()


class TransformersEngine:
    def __init__(self, path: str, temperature: float):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.temperature = temperature

    def complete(self, prompts: list[list[int]], max_tokens: list[int], stop: list[str]) -> list[tuple[str, bool]]:
        import torch

        out = []
        for ids, limit in zip(prompts, max_tokens):  # one at a time: each prompt has its own budget
            sampling = ({"do_sample": True, "temperature": self.temperature, "top_k": 0} if self.temperature
                        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
            prompt = torch.tensor([ids]).to(self.model.device)
            with torch.no_grad():
                gen = self.model.generate(prompt, max_new_tokens=limit, stop_strings=stop or None, tokenizer=self.tok,
                                          pad_token_id=self.tok.pad_token_id or 0, **sampling)
            new = gen[0, len(ids):].tolist()
            text = self.tok.decode(new, skip_special_tokens=True)
            ended = any(s and s in text for s in stop) or (bool(new) and new[-1] == self.tok.eos_token_id)
            for s in stop:
                if s and s in text:
                    text = text[: text.index(s)]
            out.append((text, ended or len(new) < limit))
        return out

    def close(self) -> None:
        self.model = None


def open_engine(kind: str, path: str, temperature: float, seed: int = 0):
    if kind == "vllm":
        return VLLMEngine(path, temperature, seed=seed)
    if kind == "transformers":
        return TransformersEngine(path, temperature)
    raise UserError(f"--engine must be vllm or transformers, got {kind!r}")


# --- budget forcing ---------------------------------------------------------------------------------------------


def sample(engine, tok, prompts: list[list[dict]], budget: Budget) -> list[Reply]:
    """Answer chat prompts with reasoning bounded as `budget` says (see the module docstring)."""
    budget.check()
    heads = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) + budget.start for m in prompts]
    thinking = [""] * len(prompts)
    waits = [0] * len(prompts)
    rounds = [0] * len(prompts)
    active = list(range(len(prompts)))
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    cap = budget.max_thinking_tokens
    while active:
        left = {i: (cap - count(thinking[i])) if cap else budget.max_tokens for i in active}
        active = [i for i in active if left[i] > 0]
        if not active:
            break
        outs = engine.complete([tok.encode(heads[i] + thinking[i], add_special_tokens=False) for i in active],
                               [left[i] for i in active], [budget.end])
        still = []
        for i, (text, ended) in zip(active, outs):
            rounds[i] += 1
            thinking[i] = _cut(tok, thinking[i] + text, cap)
            used = count(thinking[i])
            if ended and budget.min_thinking_tokens and used < budget.min_thinking_tokens:
                sep = "" if not thinking[i] or thinking[i][-1].isspace() else " "
                thinking[i] = _cut(tok, thinking[i] + sep + budget.wait, cap)
                waits[i] += 1
                still.append(i)
        active = still
    tails = [heads[i] + thinking[i] + budget.end for i in range(len(prompts))]
    answers = engine.complete([tok.encode(t, add_special_tokens=False) for t in tails],
                              [budget.max_tokens] * len(prompts), [])
    replies = []
    for i, (answer, _) in enumerate(answers):
        text = f"{budget.start}{thinking[i]}{budget.end}{answer}"
        replies.append(Reply(prompts[i][-1]["content"], thinking[i], answer, count(thinking[i]), waits[i],
                             count(answer), rounds[i], text))
    return replies


def _cut(tok, text: str, cap: int | None) -> str:
    """At most `cap` tokens of `text` (by the model's tokenizer)."""
    if not cap:
        return text
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) <= cap:
        return text
    return tok.decode(ids[:cap], skip_special_tokens=False)


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
    try:
        return resolve_model(target, Path.cwd())
    except ValueError as exc:
        raise UserError(str(exc)) from None


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
