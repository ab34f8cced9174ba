"""One call of a Python tool, in its own process: a fresh interpreter (`python -I`) in an empty temporary folder
that is also its HOME and TMPDIR, with PATH and a UTF-8 locale as its whole environment (no API key or other
secret is inherited), an address-space limit (`memory_mb`), a CPU-time limit and a wall-clock `timeout_s` after
which its whole process group is killed. What the tool prints goes to its stderr; its return value comes back as
JSON text (a string as it is). A tool that raises, hangs, runs out of memory or gets arguments its function does not
take gives an error, never an exception here.

This keeps an ordinary tool from reading the run's secrets or the user's home by accident and keeps a broken one
from hanging or swamping the run. It is not a security boundary against hostile code: the tool runs as the same
user, on the same file system.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MAX_RESULT_CHARS = 20_000  # a longer result is cut (the model's context is the limit that matters)

RUNNER = r"""
import importlib.util, json, os, sys, traceback
job = json.loads(sys.stdin.read())
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # what the tool prints goes to stderr, so it cannot garble the reply
sys.path.insert(0, os.path.dirname(job["path"]))
try:
    spec = importlib.util.spec_from_file_location("datagen_tool", job["path"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = getattr(module, job["function"])(**job["arguments"])
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    out.write(json.dumps({"result": text}))
except BaseException as exc:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{os.path.basename(f.filename)} line {f.lineno}" for f in reversed(frames)
                  if f.filename == job["path"]), None)
    message = f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else "")
    out.write(json.dumps({"error": message}))
out.flush()
"""


@dataclass
class CallResult:
    result: str | None
    error: str | None
    seconds: float


def call_python(path: Path, function: str, arguments: dict, timeout_s: float, memory_mb: int) -> CallResult:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="datagen-tool-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}

        def limits() -> None:  # in the child, before it runs Python
            import resource

            cap = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            cpu = int(timeout_s) + 2
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

        job = json.dumps({"path": str(path), "function": function, "arguments": arguments})
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-c", RUNNER], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=home, env=env,
                                    preexec_fn=limits, start_new_session=True, text=True)
        except OSError as exc:
            return CallResult(None, f"the tool could not start: {exc}", time.monotonic() - start)
        try:
            out, err = proc.communicate(job, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return CallResult(None, f"the tool timed out after {timeout_s:g} s", time.monotonic() - start)
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C) while the tool ran
                _kill(proc)
        seconds = time.monotonic() - start
    try:
        reply = json.loads(out)
    except json.JSONDecodeError:
        why = _died(proc.returncode, memory_mb)
        tail = (err or "").strip().splitlines()[-1:] or [""]
        return CallResult(None, f"the tool process {why}" + (f": {tail[0][:300]}" if tail[0] else ""), seconds)
    if "error" in reply:
        return CallResult(None, reply["error"][:2000], seconds)
    return CallResult(_cut(reply["result"]), None, seconds)


def _cut(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"\n[cut: {len(text) - MAX_RESULT_CHARS} more characters]"


def _died(code: int | None, memory_mb: int) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"was killed by {name}" + (" (its CPU-time limit)" if name == "SIGXCPU" else "")
    if code == 1:
        return f"failed (exit 1; over its memory_mb of {memory_mb}?)"
    return f"exited with {code} before it replied"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
