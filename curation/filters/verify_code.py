"""`verify_code`: run the generated Python followed by its tests; a row is kept when the program exits 0.

Each program runs in its own subprocess:
- in a fresh temporary directory (its cwd, deleted afterwards), as `python -I` (isolated mode: no user site, no
  PYTHON* variables, the script's folder not on sys.path), with an environment stripped to PATH and a locale (no
  proxies, no tokens, no HOME);
- under `resource` limits: RLIMIT_AS (memory), RLIMIT_CPU (CPU seconds), RLIMIT_FSIZE (16 MB files),
  RLIMIT_NOFILE (64), no core dumps; plus a wall-clock timeout after which its whole process group is killed;
- without network where the system allows: inside `unshare -n` (as root) or `unshare -rn` (an unprivileged user
  namespace), in which only a down loopback device exists. Where neither works (no `unshare`, or user namespaces
  disabled), the program runs with the network of this process, and `network_isolated()` says so.

This is a sandbox against accidents (loops, memory blow-ups, stray files), not against a determined attacker.
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from datagen.text import as_text
from datagen.verdict import Verdict

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class CodeResult:
    passed: bool
    reason: str


def extract_code(text: str, mode: str = "fenced") -> str:
    """The last fenced code block when there is one (and mode is `fenced`), else the whole text."""
    if mode == "fenced":
        blocks = _FENCE.findall(text)
        if blocks:
            return blocks[-1]
    return text


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    for flags in ("-n", "-rn"):
        try:
            done = subprocess.run([exe, flags, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return (exe, flags)
    return ()


def network_isolated() -> bool:
    """True when programs run in their own network namespace (no network at all)."""
    return bool(_unshare_prefix())


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(source: str, timeout_s: float = 10, memory_mb: int = 512) -> CodeResult:
    """Run one Python program in the sandbox described above."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="datagen-code-") as work:
        path = os.path.join(work, "main.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(source)
        cmd = [*_unshare_prefix(), sys.executable, "-I", path]
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(memory_mb, int(timeout_s) + 1))
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return CodeResult(False, f"timed out after {timeout_s:g} s")
    return _judge(proc.returncode, err.decode("utf-8", "replace"), memory_mb)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _judge(code: int, stderr: str, memory_mb: int) -> CodeResult:
    if code == 0:
        return CodeResult(True, "tests passed")
    if "MemoryError" in stderr:
        return CodeResult(False, f"exceeded the memory limit of {memory_mb} MB")
    if code == -signal.SIGXCPU:
        return CodeResult(False, "exceeded the CPU time limit")
    if code == -signal.SIGKILL:
        return CodeResult(False, "killed (memory or CPU limit)")
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), f"exit code {code}")
    return CodeResult(False, f"tests failed: {last.strip()[:200]}")


def verify_code_filter(spec, rows: list[dict]) -> list[Verdict]:
    programs = [extract_code(as_text(r.get(spec.column)), spec.extract) + "\n\n" + as_text(r.get(spec.tests)) + "\n"
                for r in rows]
    with ThreadPoolExecutor(max_workers=spec.parallel) as pool:
        results = list(pool.map(lambda p: run_program(p, spec.timeout_s, spec.memory_mb), programs))
    return [Verdict(r.passed, r.reason, 1.0 if r.passed else 0.0) for r in results]
