"""Teacher on plain transformers `generate`: the fallback without vLLM, and the student side.

Slower than vLLM (no continuous batching) but needs nothing beyond torch and transformers. With a thinking budget
(`GenOptions.thinking`, thinking.py) each sample's phases are generated one after another, one prompt at a time.
"""

from __future__ import annotations

import copy
import time
from itertools import groupby
from collections.abc import Iterator

from datagen.teachers.base import REQUEST, GenOptions, GenRequest, Sample, Sampling, TokenLogprobs, split_sample
from datagen.teachers.thinking import Forcing, Phase
from datagen.teachers.toolcalls import template_messages

BATCH_SIZE = 16  # sequences per `generate` call (prompts x samples per prompt)


class TransformersTeacher:
    def __init__(self, name: str, model_path: str, device: str = "cpu", batch_size: int = BATCH_SIZE):
        self.name = name
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model_path)
            tok.padding_side = "left"  # decoder-only: new tokens must follow each prompt directly
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            # float32 on CPU: bfloat16 matmuls are slow on CPUs without native bf16 support.
            dtype = torch.float32 if self.device == "cpu" else "auto"
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype).to(self.device).eval()
            self._tokenizer = tok
        return self._model, self._tokenizer

    def start(self) -> bool:
        started = self._model is None
        self._load()
        return started

    def stream(self, requests: list[GenRequest], options: GenOptions) -> Iterator[list[tuple[int, list[Sample]]]]:
        """Batches of `generate` calls; each batch's requests come back when it ends (see base.Teacher)."""
        if options.json_schema is not None:
            raise ValueError("structured output needs backend vllm or openai")
        s = options.sampling
        if s.presence_penalty is not None or s.frequency_penalty is not None:
            raise ValueError("presence_penalty and frequency_penalty need backend vllm or openai")
        scores = [i for i, r in enumerate(requests) if r.continuation is not None]
        for i in scores:  # scoring given text: one forward pass each (datagen/teachers/scoring.py)
            yield [(i, [self._score(requests[i], options)])]
        # num_return_sequences is one number per `generate` call, so batch requests that want the same count.
        order = sorted((i for i, r in enumerate(requests) if r.continuation is None),
                       key=lambda i: len(requests[i].keys))
        for n, group in groupby(order, key=lambda i: len(requests[i].keys)):
            group = list(group)
            if n == 0:
                yield [(i, []) for i in group]
                continue
            per_batch = max(1, self.batch_size // n)
            for start in range(0, len(group), per_batch):
                idx = group[start : start + per_batch]
                batch = [requests[i] for i in idx]
                if options.thinking is not None:
                    yield [(i, self._forced(r, n, options)) for i, r in zip(idx, batch)]
                else:
                    yield list(zip(idx, [self._split(s, options) for s in self._generate_isolated(batch, n, options)]))

    def _score(self, request: GenRequest, options: GenOptions) -> Sample:
        """The continuation read after the prompt in one forward pass: the top k at each of its tokens."""
        import torch

        from datagen.teachers.scoring import continuation_ids, scored_positions, token_strings

        started = time.perf_counter()
        try:
            if not options.logprobs:
                raise ValueError("scoring needs logprobs (the top k to keep at each token)")
            model, tok = self._load()
            head = tok.apply_chat_template(*_chat(request, options, tok), add_generation_prompt=True, tokenize=True)
            head = list(head["input_ids"] if hasattr(head, "keys") else head)
            ids = continuation_ids(tok, request.continuation)
            if not ids:
                raise ValueError("the response to score is empty")
            with torch.no_grad():
                logits = model(torch.tensor([head + ids], device=model.device), use_cache=False).logits[0]
            lp = logits[len(head) - 1 : len(head) - 1 + len(ids)].float().log_softmax(-1)
            top_lp, top_ids = lp.topk(options.logprobs, dim=-1)
            chosen = lp.gather(-1, torch.tensor(ids, device=lp.device).unsqueeze(-1)).squeeze(-1).tolist()
            positions = [{**{t: (v, r + 1) for r, (t, v) in enumerate(zip(ti.tolist(), tv.tolist()))},
                          **({} if tid in ti.tolist() else {tid: (c, options.logprobs + 1)})}
                         for tid, c, ti, tv in zip(ids, chosen, top_ids, top_lp)]
            return Sample(text=request.continuation, finish_reason="scored", prompt_tokens=len(head) + len(ids),
                          completion_tokens=0, seconds=time.perf_counter() - started,
                          logprobs=scored_positions(ids, token_strings(tok, ids, request.continuation), positions,
                                                    options.logprobs))
        except Exception as exc:  # this text only: asked again, it would fail the same way
            return Sample(text=None, error=f"{type(exc).__name__}: {exc}", error_kind=REQUEST)

    def _split(self, samples: list[Sample], options: GenOptions) -> list[Sample]:
        """With `reasoning` asked for, the trace split off each text and counted with the model's tokenizer."""
        if options.reasoning is not None:
            tok = self._load()[1]
            for sample in samples:
                split_sample(sample, options.reasoning, lambda t: len(tok.encode(t, add_special_tokens=False)))
        return samples

    def _forced(self, request: GenRequest, n: int, options: GenOptions) -> list[Sample]:
        """n samples of one prompt, each with its own budget-forced trace; a failure fails only its sample."""
        import torch

        _, tok = self._load()
        if options.sampling.seed is not None:
            torch.manual_seed(options.sampling.seed)  # as for a batch: one seed per prompt's samples
        out = []
        for _ in range(n):
            try:
                messages, extra = template_messages(request.messages, options.tools, tok)
                head = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
                f = Forcing(options.thinking, head, tok, options.sampling.stop)
                f.prompt_tokens = len(tok.encode(f.head, add_special_tokens=False))
                while (phase := f.next()) is not None:
                    started = time.perf_counter()
                    f.feed(*self._complete(phase, options.sampling))
                    f.seconds += time.perf_counter() - started
                out.append(f.sample())
            except Exception as exc:
                out.append(Sample(text=None, error=f"{type(exc).__name__}: {exc}", error_kind=REQUEST))
        return out

    def _complete(self, phase: Phase, s: Sampling) -> tuple[str, bool, str, int]:
        """One phase: (text, ended by itself, finish reason, tokens generated)."""
        import torch

        model, tok = self._load()
        ids = torch.tensor([tok.encode(phase.prompt, add_special_tokens=False)]).to(model.device)
        kwargs = {**_generation_kwargs(s), "max_new_tokens": phase.max_tokens}
        kwargs.pop("stop_strings", None)
        if phase.stop:
            kwargs["stop_strings"] = list(phase.stop)
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tok.pad_token_id,
                                 tokenizer=tok, **kwargs)
        sample = self._sample(gen[0, ids.shape[1]:].tolist(), None, _eos_ids(model, tok),
                              GenOptions(s), phase.stop)
        return sample.text, sample.finish_reason == "stop", sample.finish_reason, sample.completion_tokens

    def _generate_isolated(self, requests: list[GenRequest], n: int, options: GenOptions) -> list[list[Sample]]:
        """One batch; if it fails, retry each request alone so one bad prompt fails only its own samples."""
        try:
            return self._generate_batch(requests, n, options)
        except Exception as exc:
            if len(requests) == 1:  # this prompt alone fails: asked again, it would fail the same way
                return [[Sample(text=None, error=f"{type(exc).__name__}: {exc}", error_kind=REQUEST) for _ in range(n)]]
            return [self._generate_isolated([r], n, options)[0] for r in requests]

    def _generate_batch(self, requests: list[GenRequest], n: int, options: GenOptions) -> list[list[Sample]]:
        import torch

        model, tok = self._load()
        prompts = [tok.apply_chat_template(*_chat(r, options, tok), add_generation_prompt=True, tokenize=False)
                   for r in requests]
        # The chat template already holds the special tokens it wants.
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        s = options.sampling
        if s.seed is not None:
            torch.manual_seed(s.seed)  # one seed per batch: transformers has no per-request generator
        # Greedy search refuses num_return_sequences > 1; its samples are identical, so generate one and copy it.
        per_prompt = 1 if s.temperature == 0 else n
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                **_generation_kwargs(s),
                num_return_sequences=per_prompt,
                pad_token_id=tok.pad_token_id,
                tokenizer=tok,  # needed for stop_strings
                return_dict_in_generate=True,
                output_logits=bool(options.logprobs) and options.logprobs_mode == "raw",
                output_scores=bool(options.logprobs) and options.logprobs_mode == "processed",
            )
        # Samples of one batch are generated together; each gets its share so per-step sums give the wall time.
        seconds = (time.perf_counter() - started) / (n * len(requests))
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        new_tokens = out.sequences[:, enc["input_ids"].shape[1] :]
        # raw: the model's logits, like vLLM's default logprobs; processed: the scores after temperature, top-k and
        # top-p (what the text was sampled from), like vLLM's processed_logprobs
        steps = out.scores if options.logprobs_mode == "processed" else out.logits
        logprobs = torch.stack(steps, dim=1).float().log_softmax(-1) if options.logprobs else None
        eos_ids = _eos_ids(model, tok)
        samples = []
        for row in range(new_tokens.shape[0]):
            lp = logprobs[row] if logprobs is not None else None
            sample = self._sample(new_tokens[row].tolist(), lp, eos_ids, options, s.stop)
            sample.prompt_tokens = int(prompt_lens[row // per_prompt])
            sample.seconds = seconds
            samples.extend(copy.deepcopy(sample) for _ in range(n // per_prompt))
        return [samples[i * n : (i + 1) * n] for i in range(len(requests))]

    def _sample(self, ids, logprobs, eos_ids, options: GenOptions, stop) -> Sample:
        tok = self._tokenizer
        end = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), None)
        ids = ids[:end] if end else ids
        while not end and ids and ids[-1] == tok.pad_token_id:  # a row that stopped on a stop string, then padded
            ids = ids[:-1]
        content = ids[:-1] if end else ids
        text = tok.decode(content, skip_special_tokens=True)
        finish = "stop" if end else "length"
        for word in stop or []:
            # generate stops *after* a stop string; like vLLM, the text excludes it.
            if word in text:
                text, finish = text[: text.index(word)], "stop"
        sample = Sample(text=text, finish_reason=finish, completion_tokens=len(ids))
        if logprobs is not None:
            sample.logprobs = _token_logprobs(tok, ids, logprobs[: len(ids)], options.logprobs)
        return sample

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        import gc

        gc.collect()


def _generation_kwargs(s: Sampling) -> dict:
    if s.temperature == 0:
        kwargs = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    else:
        # top_k=0 turns off transformers' default top-k of 50, matching vLLM and OpenAI where None means "no top-k".
        kwargs = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k or 0}
        if s.min_p is not None:
            kwargs["min_p"] = s.min_p
    kwargs["max_new_tokens"] = s.max_tokens
    if s.repetition_penalty is not None:
        kwargs["repetition_penalty"] = s.repetition_penalty
    if s.stop:
        kwargs["stop_strings"] = list(s.stop)
    return kwargs


def _eos_ids(model, tok) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def _token_logprobs(tok, ids: list[int], logprobs, k: int) -> list[TokenLogprobs]:
    top_lp, top_ids = logprobs.topk(k, dim=-1)
    chosen = logprobs.gather(-1, logprobs.new_tensor(ids, dtype=top_ids.dtype).unsqueeze(-1)).squeeze(-1)
    result = []
    for pos, token_id in enumerate(ids):
        alt_ids = top_ids[pos].tolist()
        result.append(
            TokenLogprobs(
                token=tok.decode([token_id]),
                token_id=token_id,
                logprob=float(chosen[pos]),
                top_tokens=[tok.decode([t]) for t in alt_ids],
                top_ids=alt_ids,
                top_logprobs=top_lp[pos].tolist(),
            )
        )
    return result


def _chat(request: GenRequest, options: GenOptions, tok) -> tuple:
    messages, extra = template_messages(request.messages, options.tools, tok)
    return (messages, extra.get("tools"))
