"""A scripted OpenAI-compatible teacher on 127.0.0.1 for tests that must know the teacher's replies.

The script is a function from the request body to a reply: a string (the assistant text), a dict with any of
`text` (None sends `content: null`), `finish_reason`, `reasoning_content` / `reasoning` (a trace in the message's own
field, as DeepSeek's API and vLLM's reasoning parsers send it), `reasoning_tokens` (usage's
`completion_tokens_details`), `tool_calls` (OpenAI-shape, as a tool-calling server sends them), `status`, `body`, `headers`, `delay`, `drop`, `echo_auth` (a 401 whose body repeats the
request's Authorization header, as careless servers do), or an exception. Every request is counted, so tests can
prove what was (and was not) sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from collections.abc import Callable


def messages_key(body: dict) -> str:
    return hashlib.sha256(json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()).hexdigest()


def echo_script(body: dict) -> str:
    """Default: answer with the last user message reversed, so content is known and differs per prompt."""
    return "echo: " + (body["messages"][-1].get("content") or "")[::-1]


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of 16 connections (a teacher's max_concurrency) overflows
    # it and the kernel resets some of them (clients see ReadError)
    request_queue_size = 256


class ScriptedServer:
    def __init__(self, script: Callable[[dict], Any] = echo_script, port: int = 0):
        self.script = script
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.counts: Counter = Counter()
        self.times: list[float] = []
        self.auth: list[str | None] = []  # the Authorization header of every POST
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.bodies.append(body)
                    server.counts[messages_key(body)] += 1
                    server.times.append(time.monotonic())
                    server.auth.append(self.headers.get("authorization"))
                reply = server.script(body)
                if not isinstance(reply, dict):
                    reply = {"text": reply}
                if reply.get("delay"):
                    time.sleep(reply["delay"])
                if reply.get("drop"):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if reply.get("echo_auth"):
                    self._send(401, {"error": f"invalid api key: {self.headers.get('authorization')}"})
                    return
                if "status" in reply and reply["status"] != 200:
                    self._send(reply["status"], reply.get("body", {"error": "scripted failure"}), reply.get("headers"))
                    return
                if "raw" in reply:
                    self._send_raw(200, reply["raw"].encode())
                    return
                self._send(200, completion(body, reply.get("text", ""), reply.get("finish_reason", "stop"), reply))

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                self._send_raw(status, json.dumps(payload).encode(), headers)

            def _send_raw(self, status: int, data: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self):
        with self.lock:
            self.bodies.clear()
            self.counts.clear()
            self.times.clear()
            self.auth.clear()


def completion(body: dict, text: str | None, finish_reason: str = "stop", reply: dict | None = None) -> dict:
    reply = reply or {}
    prompt_tokens = sum(len((m.get("content") or "").split()) for m in body.get("messages", []))
    message = {"role": "assistant", "content": text}
    message.update({k: reply[k] for k in ("reasoning_content", "reasoning", "tool_calls") if k in reply})
    words = len((text or "").split()) + sum(len(str(message.get(k) or "").split())
                                             for k in ("reasoning_content", "reasoning"))
    out: dict = {
        "id": "cmpl-scripted", "object": "chat.completion", "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": words, "total_tokens": prompt_tokens + words},
    }
    if "reasoning_tokens" in reply:
        out["usage"]["completion_tokens_details"] = {"reasoning_tokens": reply["reasoning_tokens"]}
    text = text or ""
    if body.get("logprobs"):
        k = body.get("top_logprobs") or 1
        content = []
        for word in text.split():
            top = [{"token": word if j == 0 else f"alt{j}", "logprob": -0.1 * (j + 1)} for j in range(k)]
            content.append({"token": word, "logprob": -0.1, "top_logprobs": top})
        out["choices"][0]["logprobs"] = {"content": content}
    return out


if __name__ == "__main__":  # a standalone server for manual tries: python tests/scripted_server.py 8011
    import sys

    with ScriptedServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8011) as s:
        print(s.base_url, flush=True)
        while True:
            time.sleep(3600)
