"""Anthropic's Message Batches API as a teacher: the same stream of finished samples, at the batch price.

A batch is one `POST {base_url}/messages/batches` holding the requests themselves (`custom_id` = the request's key,
`params` = the body the online teacher would send), split at `max_requests_per_batch` and `max_batch_mb`. The run
(batch_run.py) records a local reference for the batch before creating it and the batch id right after, so a run
killed after submitting polls the same batch on the next run, and never pays twice.

A create whose reply was lost (a timeout, a 5xx, a kill) may have made the batch all the same. Anthropic's batches
carry no metadata to find it by, so it is looked for by what is known: created after the reference was recorded
(the reference holds that time) and holding as many requests; once such a batch ends, its results are matched by
custom_id, so a batch that was not ours answers nothing and its requests are sent again.

Statuses are mapped to the store's words: `in_progress`, `canceling` -> `cancelling`, `ended` -> `completed`,
`expired` (some requests expired) or `cancelled` (a cancel was asked). An errored line is a failed request: an
`invalid_request_error` is a request fault, others (`api_error`, `overloaded_error`) provider faults.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime


from datagen.teachers.anthropic_teacher import AnthropicTeacher, headers, parse_message
from datagen.teachers.base import PROVIDER, REQUEST, GenOptions, GenRequest, Sample
from datagen.teachers.batch_run import Batch, BatchApiError, BatchRun, HttpApi, backoff, cancel_open
from datagen.teachers.journal import BatchJournal
from datagen.teachers.servers import label_of

LIST_PAGES = 20  # pages of batches (newest first) searched for one whose id a killed run did not record
CLOCK_SLACK_S = 300  # the provider's clock may differ from ours by this much


class AnthropicBatchTeacher:
    def __init__(self, name: str, *, base_url: str, model: str, api_key: str | None, journal: BatchJournal,
                 anthropic_version: str = "2023-06-01", thinking: dict | None = None, poll_seconds: float = 30,
                 max_requests_per_batch: int = 100_000, max_batch_mb: float = 256, timeout_s: float = 600,
                 max_attempts: int = 4):
        self.name = name
        # the online teacher builds each request's params exactly as it would send them, and scrubs the key
        self.online = AnthropicTeacher(name, base_url=base_url, model=model, api_key=api_key,
                                       anthropic_version=anthropic_version, thinking=thinking, timeout_s=timeout_s,
                                       max_attempts=max_attempts)
        self.base = base_url.rstrip("/")
        self.label = label_of(self.base)
        self._headers = headers(api_key, anthropic_version)
        self.journal = journal
        self.poll_seconds = poll_seconds
        self.max_lines = max_requests_per_batch
        self.max_bytes = int(max_batch_mb * 1_000_000)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts

    def stream(self, requests: list[GenRequest], options: GenOptions):
        yield from BatchRun(self, _Api(self), requests, options).go()

    def cancel_open(self) -> list[tuple[str, str]]:
        """Ask Anthropic to cancel every open batch of this teacher; (batch id, status) of each."""
        return cancel_open(self.name, self.journal, _Api(self))

    def start(self) -> bool:
        return False

    def close(self) -> None:
        pass


class _Api(HttpApi):
    """The Message Batches endpoints (batch_run.BatchApi), with retries on dropped connections, timeouts, 429, 5xx
    and 529."""

    def line(self, key: str, body: dict) -> bytes:
        return json.dumps({"custom_id": key, "params": body}, ensure_ascii=False).encode() + b"\n"

    def prepare(self, data: bytes, keys: list[str]) -> str:
        """No upload: the reference is local, and holds when it was made (what `find` looks after)."""
        return f"local-{time.time():.0f}-{secrets.token_hex(4)}"

    def create(self, ref: str, data: bytes, count: int) -> Batch:
        body = b'{"requests": [' + b",".join(data.splitlines()) + b"]}"
        for attempt in range(1, self.t.max_attempts + 1):
            try:
                return _batch(self.call("POST", "/messages/batches", attempts=1, content=body,
                                        headers={"content-type": "application/json"}).json())
            except BatchApiError:  # it may have been made all the same: look before trying again
                found = self.find(ref, count)
                if found is not None:
                    return found
                if attempt == self.t.max_attempts:
                    raise
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def find(self, ref: str, count: int) -> Batch | None:
        """The oldest batch created since `ref` was made that holds `count` requests and that no other record of the
        journal names."""
        since = float(ref.split("-")[1]) - CLOCK_SLACK_S
        known = {r.batch_id for r in self.t.journal.open_batches() if r.batch_id}
        found: list[Batch] = []
        after = None
        for _ in range(LIST_PAGES):
            page = self.call("GET", "/messages/batches",
                             params={"limit": 100, **({"after_id": after} if after else {})}).json()
            older = False
            for b in page.get("data") or []:
                if _created(b) < since:
                    older = True  # newest first: the rest are older still
                    break
                batch = _batch(b)
                if batch.total == count and batch.id not in known:
                    found.append(batch)
            if older or not page.get("has_more") or not page.get("data"):
                break
            after = page.get("last_id") or page["data"][-1]["id"]
        return min(found, key=lambda b: _created(b.raw)) if found else None

    def get(self, batch_id: str) -> Batch:
        return _batch(self.call("GET", f"/messages/batches/{batch_id}").json())

    def results(self, batch: Batch) -> list[str]:
        # the documented path under our own base URL, not the reply's results_url: the key goes nowhere else
        return self.call("GET", f"/messages/batches/{batch.id}/results").text.splitlines()

    def parse_line(self, line: str) -> tuple[str | None, Sample | None]:
        try:
            item = json.loads(line)
            key, result = item.get("custom_id"), item.get("result") or {}
        except (json.JSONDecodeError, AttributeError):
            return None, None
        kind = result.get("type")
        if kind == "succeeded":
            return key, parse_message(result.get("message"), json.dumps(result.get("message")))
        if kind == "errored":
            error = result.get("error") or {}
            error = error.get("error", error)  # {"type": "error", "error": {"type": ..., "message": ...}}
            etype = error.get("type", "error")
            return key, Sample(text=None, error=f"{etype}: {error.get('message', '')}"[:300],
                               error_kind=REQUEST if etype == "invalid_request_error" else PROVIDER)
        return key, None  # canceled or expired before it ran: sent again

    def cancel(self, batch_id: str) -> Batch:
        return _batch(self.call("POST", f"/messages/batches/{batch_id}/cancel").json())

    def close(self) -> None:
        self.client.close()


def _batch(b: dict) -> Batch:
    counts = b.get("request_counts") or {}
    status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(b.get("processing_status"), "unknown")
    if b.get("processing_status") == "ended":
        status = ("cancelled" if b.get("cancel_initiated_at") else "expired" if counts.get("expired")
                  else "completed")
    total = sum(counts.get(k) or 0 for k in ("processing", "succeeded", "errored", "canceled", "expired"))
    return Batch(b["id"], status, counts.get("succeeded"), counts.get("errored"), total, None, b)


def _created(b: dict) -> float:
    try:
        return datetime.fromisoformat(str(b.get("created_at")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")  # unreadable: never taken for older than the reference
