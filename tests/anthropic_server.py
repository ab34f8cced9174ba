"""A scripted Anthropic-shaped API on 127.0.0.1: the Messages API and the Message Batches API.

`POST /v1/messages` answers from `script(body)`: a string (the text), or a dict with any of `text`, `thinking` (a
thinking block before the text), `stop_reason` (default end_turn), `status`/`body`/`headers` (an error reply, e.g.
a 429 with retry-after), `delay`, `drop`. Usage counts words: input tokens are the words of the system prompt and
the messages, output tokens those of the text and the thinking.

Batches (`/v1/messages/batches`: create, get, list newest first, results, cancel) move from in_progress to ended
over the polls they get; `plans` (one per created batch, in order) set `polls` (polls spent in progress first),
`finish` (how many requests run before an expiry), `outcome` (ended | expired) and `lose_create_reply` (the batch is
made but the reply is a 502). `hold = True` keeps every batch in progress. Every message that ran, every creation and
every request's headers are counted, so tests can prove what was sent and paid.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from collections.abc import Callable

from tests.scripted_server import _Server


def echo(body: dict) -> str:
    return "echo: " + body["messages"][-1]["content"][::-1]


def words(text) -> int:
    return len(str(text or "").split())


def message(body: dict, reply: dict) -> dict:
    content = []
    if reply.get("thinking"):
        content.append({"type": "thinking", "thinking": reply["thinking"], "signature": "sig"})
    if reply.get("text") is not None:
        content.append({"type": "text", "text": reply["text"]})
    prompt = words(body.get("system")) + sum(words(m.get("content")) for m in body.get("messages", []))
    return {"id": "msg_scripted", "type": "message", "role": "assistant", "model": body.get("model"),
            "content": content, "stop_reason": reply.get("stop_reason", "end_turn"), "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": words(reply.get("text")) + words(reply.get("thinking"))}}


class AnthropicServer:
    def __init__(self, script: Callable[[dict], Any] = echo):
        self.script = script
        self.lock = threading.Lock()
        self.bodies: list[dict] = []  # every /messages body
        self.headers: list[dict] = []  # the headers of every request, any endpoint
        self.batches: dict[str, dict] = {}
        self.plans: list[dict] = []
        self.hold = False
        self.creations = 0
        self.ran: Counter = Counter()  # custom_id -> times it ran in a batch (was paid for)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.headers.append(dict(self.headers))
                    status, payload = server.get(self.path)
                self._send(status, payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with server.lock:
                    server.headers.append(dict(self.headers))
                path = self.path.split("?")[0]
                if path == "/v1/messages":
                    return self._message(body)
                with server.lock:
                    status, payload = server.post(path, body)
                self._send(status, payload)

            def _message(self, body: dict):
                with server.lock:
                    server.bodies.append(body)
                reply = server.script(body)
                reply = reply if isinstance(reply, dict) else {"text": reply}
                if reply.get("delay"):
                    time.sleep(reply["delay"])
                if reply.get("drop"):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if reply.get("status", 200) != 200:
                    return self._send(reply["status"], reply.get("body") or {
                        "type": "error", "error": {"type": "api_error", "message": "scripted failure"}},
                        reply.get("headers"))
                self._send(200, message(body, reply))

            def _send(self, status: int, payload, headers: dict | None = None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- Message Batches ---------------------------------------------------------------------------------------

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        if path == "/v1/messages/batches":
            self.creations += 1
            plan = self.plans.pop(0) if self.plans else {}
            bid = f"msgbatch_{self.creations:04d}"
            self.batches[bid] = {"requests": body["requests"], "plan": plan, "polls": 0, "ended": False,
                                 "results": None, "cancel": None,
                                 "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
            if plan.get("lose_create_reply"):
                return 502, {"type": "error", "error": {"type": "api_error", "message": "bad gateway"}}
            return 200, self.public(bid)
        if path.startswith("/v1/messages/batches/") and path.endswith("/cancel"):
            bid = path.split("/")[4]
            if bid not in self.batches:
                return 404, {"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}}
            b = self.batches[bid]
            if not b["ended"]:
                b["cancel"] = datetime.now(UTC).isoformat()
            return 200, self.public(bid)
        return 404, {"type": "error", "error": {"type": "not_found_error", "message": f"no route {path}"}}

    def get(self, path: str) -> tuple[int, Any]:
        route, _, query = path.partition("?")
        parts = route.split("/")
        if route == "/v1/messages/batches":
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            ids = sorted(self.batches, reverse=True)  # newest first
            if "after_id" in params:
                ids = ids[ids.index(params["after_id"]) + 1:]
            limit = int(params.get("limit", 20))
            page = [self.public(i) for i in ids[:limit]]
            return 200, {"data": page, "has_more": len(ids) > limit, "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None}
        if len(parts) >= 5 and parts[4] in self.batches:
            bid = parts[4]
            if len(parts) == 6 and parts[5] == "results":
                b = self.batches[bid]
                if not b["ended"]:
                    return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "batch still processing"}}
                return 200, "".join(json.dumps(x) + "\n" for x in b["results"]).encode()
            self._advance(bid)
            return 200, self.public(bid)
        return 404, {"type": "error", "error": {"type": "not_found_error", "message": f"no route {route}"}}

    def _advance(self, bid: str) -> None:
        b = self.batches[bid]
        b["polls"] += 1
        if b["ended"]:
            return
        if b["cancel"] is not None:
            self._end(b, b["plan"].get("finish", 0), "canceled")
        elif not self.hold and b["polls"] > b["plan"].get("polls", 1):
            expired = b["plan"].get("outcome") == "expired"
            self._end(b, b["plan"].get("finish", 0) if expired else len(b["requests"]), "expired")

    def _end(self, b: dict, finish: int, rest: str) -> None:
        results = []
        for i, req in enumerate(b["requests"]):
            if i >= finish:
                results.append({"custom_id": req["custom_id"], "result": {"type": rest}})
                continue
            self.ran[req["custom_id"]] += 1
            reply = self.script(req["params"])
            reply = reply if isinstance(reply, dict) else {"text": reply}
            if reply.get("status", 200) != 200:
                error = (reply.get("body") or {}).get("error") or {"type": "api_error", "message": "scripted"}
                results.append({"custom_id": req["custom_id"], "result": {
                    "type": "errored", "error": {"type": "error", "error": error}}})
            else:
                results.append({"custom_id": req["custom_id"], "result": {
                    "type": "succeeded", "message": message(req["params"], reply)}})
        b["results"], b["ended"] = results, True

    def public(self, bid: str) -> dict:
        b = self.batches[bid]
        kinds = Counter(r["result"]["type"] for r in b["results"] or [])
        processing = 0 if b["ended"] else len(b["requests"])
        return {"id": bid, "type": "message_batch", "created_at": b["created_at"],
                "processing_status": "ended" if b["ended"] else "canceling" if b["cancel"] else "in_progress",
                "cancel_initiated_at": b["cancel"], "ended_at": None, "expires_at": None, "archived_at": None,
                "request_counts": {"processing": processing, "succeeded": kinds["succeeded"],
                                   "errored": kinds["errored"], "canceled": kinds["canceled"],
                                   "expired": kinds["expired"]},
                "results_url": f"{self.base_url}/messages/batches/{bid}/results" if b["ended"] else None}
