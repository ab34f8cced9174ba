"""Teacher backends. Each lives in its own file and imports its heavy libraries only when created."""

from __future__ import annotations

import os
from pathlib import Path

from datagen.errors import UserError


def teacher_identity(spec, spec_dir) -> dict:
    """What about a teacher determines its outputs (part of every cache key); never a secret."""
    from datagen.bundled import model_identity

    if spec.backend in ("openai", "anthropic"):
        # several servers serve the same model: their order does not change what comes back
        urls = sorted(spec.base_url) if isinstance(spec.base_url, list) else spec.base_url
        identity = {"backend": spec.backend, "model": spec.model, "base_url": urls}
        if getattr(spec, "thinking", None) is not None:  # anthropic's extended thinking changes every reply
            identity["thinking"] = spec.thinking.budget_tokens
        if spec.extra_body:  # only when set, so the keys of teachers without one never change
            from datagen.extra_body import keyed

            identity["extra_body"] = keyed(spec.extra_body)
        return identity
    identity = {"backend": spec.backend, "model": model_identity(spec.model, spec_dir)}
    if spec.backend == "vllm" and spec.engine.tool_parser:  # only when set: other keys never change
        identity["tool_parser"] = spec.engine.tool_parser
    if not spec.model.startswith("bundled:") and Path(identity["model"]).is_dir():
        from datagen.teachers.fingerprint import folder_fingerprint

        identity["weights"] = folder_fingerprint(identity["model"])  # a retrained student must regenerate
    return identity


# Measured on this project's 2-core CPU machines with the bundled model already converted, vLLM's import included:
# 10 s and 12 s with the cores to itself, 33 s to 75 s while other jobs shared them.
VLLM_START = "about 10 s on a 2-core CPU; a minute or more on a busy one"


def start_message(name: str, spec, where: str = "") -> str:
    """What the user waits for while a teacher gets ready (said before the wait, with its expected length);
    `where` says where it runs when that is not here (", 2 replicas on Ray")."""
    if spec.backend == "vllm":
        return f"starting vLLM engine for teacher {name} ({spec.model}{where}) ... ({VLLM_START})"
    if spec.backend == "transformers":
        return f"loading {spec.model} with transformers for teacher {name}{where} ..."
    urls = spec.base_url if isinstance(spec.base_url, list) else [spec.base_url]
    return f"teacher {name}: {spec.model} at {', '.join(urls)}"


def make_teacher(name: str, spec, spec_dir, seed: int, journal=None, ray: bool = False, logprobs_mode: str = "raw"):
    """Create the teacher a spec entry describes. Loads nothing until the first generate call where possible.
    A batch-mode teacher needs the `journal` its batches are recorded in (teachers/journal.py). A vLLM engine keeps
    `logprobs_mode` (raw or processed) logprobs for every request. With `ray`, an
    in-process backend runs as `replicas` Ray actors instead (replicas.py)."""
    if spec.backend == "anthropic":
        return _anthropic(name, spec, _api_key(name, spec), journal)
    if spec.backend == "openai":
        from datagen.teachers.openai_teacher import OpenAITeacher

        api_key = _api_key(name, spec)
        if spec.batch.enabled and journal is not None:  # without one (no store to record batches in) it asks online
            from datagen.teachers.openai_batch import OpenAIBatchTeacher

            b = spec.batch
            return OpenAIBatchTeacher(name, base_url=spec.base_url, model=spec.model, api_key=api_key,
                                      journal=journal, completion_window=b.completion_window,
                                      poll_seconds=b.poll_seconds, max_requests_per_batch=b.max_requests_per_batch,
                                      max_file_mb=b.max_file_mb, timeout_s=spec.timeout_s,
                                      max_attempts=spec.max_attempts)
        return OpenAITeacher(name, base_url=spec.base_url, model=spec.model, api_key=api_key,
                             max_concurrency=spec.max_concurrency, timeout_s=spec.timeout_s,
                             max_attempts=spec.max_attempts, requests_per_minute=spec.requests_per_minute,
                             tokens_per_minute=spec.tokens_per_minute, rate_limit_wait_s=spec.rate_limit_wait_s,
                             adaptive_rate=spec.adaptive_rate, down_limit_s=spec.down_limit_s,
                             extra_body=spec.extra_body)
    from datagen.bundled import resolve_model

    path = resolve_model(spec.model, spec_dir)
    if ray:
        from datagen.teachers.replicas import RayTeacher

        if spec.backend == "vllm":
            settings = {**spec.engine.model_dump(), "seed": seed, "logprobs_mode": logprobs_mode}
            return RayTeacher(name, "vllm", str(path), settings, spec.replicas, spec.engine.tensor_parallel_size)
        settings = {"device": spec.device, "batch_size": spec.batch_size}
        return RayTeacher(name, "transformers", str(path), settings, spec.replicas)
    if spec.backend == "vllm":
        from datagen.teachers.vllm_teacher import VLLMTeacher

        settings = {**spec.engine.model_dump(), "seed": seed, "logprobs_mode": logprobs_mode}
        return VLLMTeacher(name, str(path), settings)
    from datagen.teachers.transformers_teacher import TransformersTeacher

    return TransformersTeacher(name, str(path), device=spec.device, batch_size=spec.batch_size)


def _api_key(name: str, spec) -> str | None:
    """The key from the variable `api_key_env` names (never from the spec, never stored)."""
    if not spec.api_key_env:
        return None
    api_key = os.environ.get(spec.api_key_env)
    if not api_key:
        raise UserError(f"teachers.{name}.api_key_env: environment variable {spec.api_key_env} is not set; "
                        "export it before running")
    return api_key


def _anthropic(name: str, spec, api_key: str | None, journal):
    thinking = spec.thinking.model_dump() if spec.thinking is not None else None
    if spec.batch.enabled and journal is not None:  # without one (no store to record batches in) it asks online
        from datagen.teachers.anthropic_batch import AnthropicBatchTeacher

        b = spec.batch
        return AnthropicBatchTeacher(name, base_url=spec.base_url, model=spec.model, api_key=api_key,
                                     journal=journal, anthropic_version=spec.anthropic_version, thinking=thinking,
                                     poll_seconds=b.poll_seconds, max_requests_per_batch=b.max_requests_per_batch,
                                     max_batch_mb=b.max_batch_mb, timeout_s=spec.timeout_s,
                                     max_attempts=spec.max_attempts)
    from datagen.teachers.anthropic_teacher import AnthropicTeacher

    return AnthropicTeacher(name, base_url=spec.base_url, model=spec.model, api_key=api_key,
                            anthropic_version=spec.anthropic_version, thinking=thinking,
                            max_concurrency=spec.max_concurrency, timeout_s=spec.timeout_s,
                            max_attempts=spec.max_attempts, requests_per_minute=spec.requests_per_minute,
                            tokens_per_minute=spec.tokens_per_minute, rate_limit_wait_s=spec.rate_limit_wait_s,
                            adaptive_rate=spec.adaptive_rate, down_limit_s=spec.down_limit_s,
                            extra_body=spec.extra_body)
