"""A scripted OpenAI-shaped Batch API on 127.0.0.1: Files (upload, content) and Batches (create, get, list, cancel).

A batch moves validating -> in_progress -> a terminal status over the polls it gets. What each batch does is its
`plan` (one per created batch, in order; default: complete): `outcome` completed | expired | failed, `finish` (how
many lines run before an expiry or a cancel; default all for completed, none otherwise), `polls` (polls spent
in_progress first), `lose_create_reply` (the batch is made but the reply is a 502). `hold = True` keeps every batch in progress (a run can be killed while it waits). The replies of
finished lines come from `script(body)` as in tests/scripted_server.py: a string, or a dict with `status` for a
refused line. Batch creations, uploads and every line that ran are counted, so tests can prove nothing was paid twice.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler
from typing import Any
from collections.abc import Callable

from tests.scripted_server import _Server, completion, echo_script


class BatchServer:
    def __init__(self, script: Callable[[dict], Any] = echo_script):
        self.script = script
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.plans: list[dict] = []  # what the next created batches do, in order
        self.hold = False
        self.creations = 0
        self.uploads = 0
        self.ran: Counter = Counter()  # custom_id -> times a line ran (was paid for)
        self.auth: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.auth.append(self.headers.get("authorization"))
                with server.lock:
                    status, payload = server.get(self.path)
                self._send(status, payload)

            def do_POST(self):
                server.auth.append(self.headers.get("authorization"))
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with server.lock:
                    status, payload = server.post(self.path, self.headers.get("content-type", ""), body)
                self._send(status, payload)

            def _send(self, status: int, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
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

    # --- endpoints -------------------------------------------------------------------------------------------

    def post(self, path: str, content_type: str, body: bytes) -> tuple[int, Any]:
        path = path.split("?")[0].removeprefix("/v1")
        if path == "/files":
            return self._upload(content_type, body)
        if path == "/batches":
            req = json.loads(body)
            if req.get("input_file_id") not in self.files:
                return 400, {"error": {"message": "no such file"}}
            self.creations += 1
            plan = self.plans.pop(0) if self.plans else {}
            bid = f"batch_{self.creations}"
            lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
            self.batches[bid] = {"id": bid, "object": "batch", "status": "validating", "input_file_id":
                                 req["input_file_id"], "endpoint": req.get("endpoint"), "lines": lines,
                                 "plan": plan, "polls": 0, "output_file_id": None, "error_file_id": None,
                                 "completion_window": req.get("completion_window"), "metadata": req.get("metadata")}
            if plan.get("lose_create_reply"):  # made, but the client never hears so (a timeout, a 502)
                return 502, {"error": {"message": "bad gateway"}}
            return 200, self._public(self.batches[bid])
        if path.startswith("/batches/") and path.endswith("/cancel"):
            b = self.batches.get(path.split("/")[2])
            if b is None:
                return 404, {"error": {"message": "no such batch"}}
            if b["status"] not in ("completed", "expired", "failed", "cancelled"):
                b["status"] = "cancelling"
            return 200, self._public(b)
        return 404, {"error": {"message": f"no route {path}"}}

    def get(self, path: str) -> tuple[int, Any]:
        route, _, query = path.partition("?")
        route = route.removeprefix("/v1")
        if route == "/batches":
            return 200, self._list(query)
        if route.startswith("/batches/"):
            b = self.batches.get(route.split("/")[2])
            if b is None:
                return 404, {"error": {"message": "no such batch"}}
            self._advance(b)
            return 200, self._public(b)
        if route.startswith("/files/") and route.endswith("/content"):
            data = self.files.get(route.split("/")[2])
            return (200, data) if data is not None else (404, {"error": {"message": "no such file"}})
        return 404, {"error": {"message": f"no route {route}"}}

    def _upload(self, content_type: str, body: bytes) -> tuple[int, Any]:
        msg = BytesParser(policy=email_policy).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
                                                          + body)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in msg.iter_parts()}
        if fields.get("purpose") != b"batch" or "file" not in fields:
            return 400, {"error": {"message": "need purpose=batch and a file"}}
        self.uploads += 1
        fid = f"file-in-{self.uploads}"
        self.files[fid] = fields["file"]
        return 200, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(fields["file"])}

    def _list(self, query: str) -> dict:
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        ids = sorted(self.batches, key=lambda b: int(b.split("_")[1]), reverse=True)  # newest first, as OpenAI
        if "after" in params:
            ids = ids[ids.index(params["after"]) + 1:]
        limit = int(params.get("limit", 20))
        page = [self._public(self.batches[i]) for i in ids[:limit]]
        return {"object": "list", "data": page, "has_more": len(ids) > limit,
                "last_id": page[-1]["id"] if page else None}

    # --- what a batch does -----------------------------------------------------------------------------------

    def _advance(self, b: dict) -> None:
        b["polls"] += 1
        if b["status"] == "validating":
            b["status"] = "in_progress"
        elif b["status"] == "cancelling":
            self._end(b, "cancelled")
        elif b["status"] == "in_progress" and not self.hold and b["polls"] > b["plan"].get("polls", 1):
            self._end(b, b["plan"].get("outcome", "completed"))

    def _end(self, b: dict, outcome: str) -> None:
        if outcome == "failed":
            b["status"] = "failed"
            b["errors"] = {"data": [{"code": "invalid_request", "message": "scripted validation failure"}]}
            return
        lines = b["lines"]
        finish = b["plan"].get("finish", len(lines) if outcome == "completed" else 0)
        out, err = [], []
        for i, line in enumerate(lines):
            if i >= finish:
                code = "batch_expired" if outcome == "expired" else "batch_cancelled"
                err.append({"id": f"req_{i}", "custom_id": line["custom_id"], "response": None,
                            "error": {"code": code, "message": f"this request {outcome[:-1]} before it ran"}})
                continue
            self.ran[line["custom_id"]] += 1
            reply = self.script(line["body"])
            reply = reply if isinstance(reply, dict) else {"text": reply}
            if reply.get("status", 200) != 200:
                err.append({"id": f"req_{i}", "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": reply["status"], "body": reply.get("body", {"error": "scripted failure"})}})
                continue
            out.append({"id": f"req_{i}", "custom_id": line["custom_id"], "error": None, "response": {
                "status_code": 200, "body": completion(line["body"], reply.get("text", ""),
                                                       reply.get("finish_reason", "stop"))}})
        b["status"] = outcome
        for name, items in (("output_file_id", out), ("error_file_id", err)):
            if items:
                fid = f"file-{name[:3]}-{b['id']}"
                self.files[fid] = "".join(json.dumps(x) + "\n" for x in items).encode()
                b[name] = fid
        b["done_count"], b["failed_count"] = len(out), len(err)

    def _public(self, b: dict) -> dict:
        shown = {k: v for k, v in b.items() if k not in ("lines", "plan", "polls", "done_count", "failed_count")}
        shown["request_counts"] = {"total": len(b["lines"]), "completed": b.get("done_count", 0),
                                   "failed": b.get("failed_count", 0)}
        return shown
