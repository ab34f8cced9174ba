"""Shared fixtures. Real engines are expensive on 2 cores (about a minute each to start), so the tests start as few as
they can: one vLLM OpenAI-compatible server for the whole session, shared by every test that needs one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bundled_model_path() -> str:
    from datagen.bundled import resolve_model

    return str(resolve_model("bundled:smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def truncated_student(bundled_model_path):
    """(model, tokenizer): the bundled model cut to 2 of its layers (0 and 15), float32, on the CPU; not to be
    trained or changed in place (tests share it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft.model import truncate_layers

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    model = AutoModelForCausalLM.from_pretrained(bundled_model_path, dtype=torch.float32)
    truncate_layers(model, [0, 15])
    return model.eval(), tok


@pytest.fixture(scope="session")
def vllm_server(bundled_model_path, tmp_path_factory):
    """vLLM's own OpenAI-compatible server on the bundled model, on 127.0.0.1 (started once per session)."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", bundled_model_path,
           "--served-model-name", "smollm2", "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", "2048", "--dtype", "float32", "--max-logprobs", "20"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600  # measured 330 s on a 2-core machine shared by five test runs
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not come up in 600 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
