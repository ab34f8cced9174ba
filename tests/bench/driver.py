"""A million requests through one driver: is the driver (plan, keys, store writes, per-row Python) what limits a
cluster? One label step of N short requests to fast OpenAI-compatible servers on loopback (separate processes, a
minimal asyncio HTTP/1.1 server each), against a bare asyncio + httpx client sending the same requests to the same
servers in the same run.

Prints requests/s of both sides and their ratio (target >= 0.5), datagen's RSS after the first 10k requests and at
the end (target: growth under 1 GB), the time per 100k requests, the time of a re-run of the finished step (target:
under a minute) and of `datagen status` and a `datagen query` on the finished store (target: seconds).

Run: .venv/bin/python tests/bench/driver.py [--requests 1000000] [--servers 2] [--concurrency 64]
(about 30 minutes for a million on 2 cores; run it alone on the machine)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPLY = json.dumps({"id": "x", "object": "chat.completion", "model": "fast",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(REPLY), REPLY)


class FastServer(asyncio.Protocol):
    """Answers every POST with the same completion; HTTP/1.1 keep-alive; parses only what it must."""

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            match = re.search(rb"(?i)content-length:\s*(\d+)", self.buf[:head_end])
            end = head_end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buf) < end:
                return
            self.buf = self.buf[end:]
            self.transport.write(RESPONSE)


def serve(port: int) -> None:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(FastServer, "127.0.0.1", port, backlog=1024))
    print("ready", flush=True)
    loop.run_until_complete(server.serve_forever())


def start_servers(n: int) -> tuple[list[subprocess.Popen], list[str]]:
    import socket

    procs, urls = [], []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        p = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True)
        p.stdout.readline()
        procs.append(p)
        urls.append(f"http://127.0.0.1:{port}/v1")
    return procs, urls


def bare_client(urls: list[str], n: int, concurrency: int) -> float:
    """The same requests (one user message each, the same body datagen sends) with asyncio + httpx, nothing else."""
    import httpx

    async def main() -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            it = iter(range(n))

            async def worker(w: int) -> None:
                for i in it:
                    body = {"model": "fast", "messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 8,
                            "temperature": 0.7, "top_p": 1.0}
                    r = await client.post(urls[(w + i) % len(urls)] + "/chat/completions", json=body)
                    r.json()["choices"][0]["message"]["content"]

            start = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return n / (time.perf_counter() - start)

    return asyncio.run(main())


def datagen_run(folder: Path, urls: list[str], n: int, concurrency: int) -> dict:
    (folder / "items.jsonl").write_text("".join(json.dumps({"item": i}) + "\n" for i in range(n)))
    (folder / "spec.yaml").write_text(f"""\
name: driver
teachers:
  fast: {{backend: openai, model: fast, base_url: {json.dumps(urls)}, max_concurrency: {concurrency},
          sampling: {{temperature: 0.7, max_tokens: 8}}}}
sources:
  items: {{path: items.jsonl}}
steps:
  - {{name: label, strategy: label, teacher: fast, input: items, prompt: "item {{{{ item }}}}", output: y}}
""")
    log = folder / "run.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "datagen.cli", "run", "spec.yaml"], cwd=folder, stdout=fh,
                                stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    rss_10k, marks, peak = None, {}, 0
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            rss = ps.memory_info().rss
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        done = [int(d) for d in re.findall(r"label: (\d+)/\d+ samples", log.read_text()[-4000:])]
        if done:
            if rss_10k is None and done[-1] >= 10_000:
                rss_10k = rss
            for mark in range(100_000, n + 1, 100_000):
                if done[-1] >= mark and mark not in marks:
                    marks[mark] = time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(log.read_text()[-3000:])
    return {"seconds": seconds, "rss_10k": rss_10k, "rss_end": peak, "marks": marks, "log": log}


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    procs, urls = start_servers(args.servers)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare = bare_client(urls, args.requests, args.concurrency)
            print(f"bare asyncio + httpx client: {bare:,.0f} requests/s", flush=True)
            got = datagen_run(Path(tmp), urls, args.requests, args.concurrency)
            rate = args.requests / got["seconds"]
            print(f"datagen run: {rate:,.0f} requests/s ({got['seconds']:.0f} s whole process, plan and store "
                  f"included); ratio {rate / bare:.2f} (target >= 0.5)")
            if got["rss_10k"]:
                growth = (got["rss_end"] - got["rss_10k"]) / 2**20
                print(f"RSS after 10k: {got['rss_10k'] / 2**20:,.0f} MiB, peak: {got['rss_end'] / 2**20:,.0f} MiB, "
                      f"growth {growth:,.0f} MiB (target < 1,024)")
            last = 0.0
            for mark, at in sorted(got["marks"].items()):
                print(f"  {mark:>9,} requests at {at:7.1f} s (+{at - last:.1f} s for the last 100k)")
                last = at
            size = sum(f.stat().st_size for f in (Path(tmp) / "runs").glob("driver.duckdb*"))
            print(f"store: {size / 2**20:,.0f} MiB, {size / args.requests:,.0f} bytes per request")
            rerun = timed([sys.executable, "-m", "datagen.cli", "run", "-q", "spec.yaml"], Path(tmp))
            print(f"re-run of the finished step: {rerun:.1f} s (target < 60)")
            status = timed([sys.executable, "-m", "datagen.cli", "status", "spec.yaml"], Path(tmp))
            query = timed([sys.executable, "-m", "datagen.cli", "query", "spec.yaml",
                           "select status, count(*), sum(completion_tokens) from requests group by 1"], Path(tmp))
            print(f"datagen status: {status:.1f} s; datagen query (group by over requests): {query:.1f} s")
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
