"""An OpenAI-compatible provider's batch API as a teacher: the same stream of finished samples, at the batch price.

The step's requests are written as JSONL (one line per sample, `custom_id` = the request's key), uploaded to
`/files`, and sent as batches to `/batches` (split at `max_requests_per_batch` lines and `max_file_mb`). The input
file is recorded before the batch is created and the batch id right after (batch_run.py), so a run that is killed or
interrupted leaves nothing it cannot find again: the next run polls those batches instead of creating new ones (a
batch whose id was not recorded is found by its input file). It polls every `poll_seconds`, saying how far each batch
is, and when a batch ends downloads its output and error files and yields every sample that came back.

A reply the provider refused (a 400 for one line) is a failed request, as online (a request fault); a line the
provider failed (5xx) is a provider fault, asked again by the next run.
"""

from __future__ import annotations

import json
import time


from datagen.teachers.base import GenOptions, GenRequest, Sample, fault_of_status
from datagen.teachers.batch_run import Batch, BatchApiError, BatchRun, HttpApi, backoff, cancel_open
from datagen.teachers.journal import BatchJournal
from datagen.teachers.openai_teacher import OpenAITeacher, parse_completion
from datagen.teachers.servers import label_of

UNFINISHED = {"batch_expired", "batch_cancelled"}  # error codes of lines that never ran: sent again
LIST_PAGES = 20  # pages of /batches searched for a batch whose id a killed run did not record


class OpenAIBatchTeacher:
    def __init__(self, name: str, *, base_url: str, model: str, api_key: str | None, journal: BatchJournal,
                 completion_window: str = "24h", poll_seconds: float = 30, max_requests_per_batch: int = 50_000,
                 max_file_mb: float = 200, timeout_s: float = 120, max_attempts: int = 4):
        self.name = name
        # the online teacher builds each line's body exactly as it would send it, and scrubs the key from errors
        self.online = OpenAITeacher(name, base_url=base_url, model=model, api_key=api_key, timeout_s=timeout_s,
                                    max_attempts=max_attempts)
        self.base = base_url.rstrip("/")
        self.label = label_of(self.base)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.journal = journal
        self.window = completion_window
        self.poll_seconds = poll_seconds
        self.max_lines = max_requests_per_batch
        self.max_bytes = int(max_file_mb * 1_000_000)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts

    def stream(self, requests: list[GenRequest], options: GenOptions):
        yield from BatchRun(self, _Api(self), requests, options).go()

    def cancel_open(self) -> list[tuple[str, str]]:
        """Ask the provider to cancel every open batch of this teacher; (batch id, status) of each. Their requests
        stay out in them until a run reads what they finished (a cancelled batch returns its finished part)."""
        return cancel_open(self.name, self.journal, _Api(self))

    def start(self) -> bool:
        return False  # nothing to load here: a batch is created when the stream starts

    def close(self) -> None:
        pass


class _Api(HttpApi):
    """The Files and Batches endpoints (batch_run.BatchApi), with retries on dropped connections, timeouts, 429 and
    5xx."""

    def line(self, key: str, body: dict) -> bytes:
        return json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body},
                          ensure_ascii=False).encode() + b"\n"

    def prepare(self, data: bytes, keys: list[str]) -> str:
        """Upload the JSONL: the batch's reference is its input file."""
        files = {"file": ("datagen-batch.jsonl", data, "application/jsonl")}
        return self.call("POST", "/files", files=files, data={"purpose": "batch"}).json()["id"]

    def create(self, ref: str, data: bytes, count: int) -> Batch:
        """Create the batch. A create that timed out or got a 5xx may have happened all the same, so before trying
        again it looks for the batch by its input file: never two batches for one file."""
        body = {"input_file_id": ref, "endpoint": "/v1/chat/completions",
                "completion_window": self.t.window, "metadata": {"datagen_teacher": self.t.name}}
        for attempt in range(1, self.t.max_attempts + 1):
            try:
                return _batch(self.call("POST", "/batches", attempts=1, json=body).json())
            except BatchApiError:
                found = self.find(ref, count)
                if found is not None:
                    return found
                if attempt == self.t.max_attempts:
                    raise
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def find(self, ref: str, count: int) -> Batch | None:
        """The batch made from this input file, if the provider has one."""
        after = None
        for _ in range(LIST_PAGES):
            page = self.call("GET", "/batches", params={"limit": 100, **({"after": after} if after else {})}).json()
            for b in page.get("data") or []:
                if b.get("input_file_id") == ref:
                    return _batch(b)
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    def get(self, batch_id: str) -> Batch:
        return _batch(self.call("GET", f"/batches/{batch_id}").json(), "unknown")

    def results(self, batch: Batch) -> list[str]:
        lines: list[str] = []
        for name in ("output_file_id", "error_file_id"):
            if batch.raw.get(name):
                lines += self.call("GET", f"/files/{batch.raw[name]}/content").text.splitlines()
        return lines

    def parse_line(self, line: str) -> tuple[str | None, Sample | None]:
        try:
            item = json.loads(line)
            key = item.get("custom_id")
        except (json.JSONDecodeError, AttributeError):
            return None, None
        resp, err = item.get("response") or None, item.get("error") or None
        if resp is not None and resp.get("status_code") == 200:
            body = resp.get("body")
            return key, parse_completion(body, json.dumps(body))
        code = (err or {}).get("code")
        if code in UNFINISHED or (resp is None and err is None):
            return key, None
        if resp is not None:
            status = resp.get("status_code") or 500
            text = f"HTTP {status}: {json.dumps(resp.get('body'))[:200]}"
            return key, Sample(text=None, error=text, error_kind=fault_of_status(int(status)))
        return key, Sample(text=None, error=f"{code}: {err.get('message', '')}")  # the provider's: asked again

    def cancel(self, batch_id: str) -> Batch:
        return _batch(self.call("POST", f"/batches/{batch_id}/cancel").json(), "cancelling")

    def close(self) -> None:
        self.client.close()


def _batch(b: dict, status: str = "validating") -> Batch:
    counts = b.get("request_counts") or {}
    errors = (b.get("errors") or {}).get("data") or []
    why = "; ".join(f"{e.get('code', 'error')}: {e.get('message', '')}".strip() for e in errors[:3]) or None
    return Batch(b["id"], b.get("status", status), counts.get("completed"), counts.get("failed"), counts.get("total"),
                 why, b)
