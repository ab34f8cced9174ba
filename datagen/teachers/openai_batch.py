"""An OpenAI-compatible provider's batch API as a teacher: the same stream of finished samples, at the batch price.

The step's requests are written as JSONL (one line per sample, `custom_id` = the request's key), uploaded to
`/files`, and sent as batches to `/batches` (split at `max_requests_per_batch` lines and `max_file_mb`). Before it
waits, the teacher records each batch in the journal the run loop hands it (the input file before the batch is
created, the batch id right after), so a run that is killed or interrupted leaves nothing it cannot find again: the
next run polls those batches instead of creating new ones. It then polls every `poll_seconds`, saying how far each
batch is, and when a batch ends downloads its output and error files and yields every sample that came back.

A batch that expires, fails or is cancelled puts its unanswered requests back (pending, with the reason) and sends
them again in a new batch, up to `max_attempts` batches per request in one run; after that each is a failed request
with the reason. A reply the provider refused (a 400 for one line) is a failed request, as online.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from datagen.errors import RunFailed
from datagen.teachers.base import GenOptions, GenRequest, Sample
from datagen.teachers.journal import BatchJournal
from datagen.teachers.openai_teacher import RETRY_STATUS, OpenAITeacher, parse_completion
from datagen.teachers.servers import label_of

TERMINAL = {"completed", "expired", "failed", "cancelled"}
UNFINISHED = {"batch_expired", "batch_cancelled"}  # error codes of lines that never ran: sent again
HEARTBEAT_SECONDS = 1.0  # yield at least this often while waiting, so the caller can commit and Ctrl-C is prompt
NOTE_EVERY_SECONDS = 300  # say how a batch is doing at least this often, and whenever its counts move
LIST_PAGES = 20  # pages of /batches searched for a batch whose id a killed run did not record


class BatchApiError(Exception):
    pass


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
        run = _Run(self, _Api(self), requests, options)
        try:
            yield from run.go()
        finally:
            run.api.close()  # batches keep running at the provider: the next run polls them

    def cancel_open(self) -> list[tuple[str, str]]:
        """Ask the provider to cancel every open batch of this teacher; (batch id, status) of each. Their requests
        stay out in them until a run reads what they finished (a cancelled batch returns its finished part)."""
        api = _Api(self)
        out = []
        try:
            for rec in self.journal.open_batches():
                batch_id = rec.batch_id or recover(api, self.journal, rec.input_file_id)
                if batch_id is None:
                    continue
                b = api.call("POST", f"/batches/{batch_id}/cancel").json()
                self.journal.update(rec.input_file_id, b.get("status", "cancelling"), *_counts(b))
                out.append((batch_id, b.get("status", "cancelling")))
        finally:
            api.close()
        return out

    def start(self) -> bool:
        return False  # nothing to load here: a batch is created when the stream starts

    def close(self) -> None:
        pass


class _Api:
    """The Files and Batches endpoints, with retries on dropped connections, timeouts, 429 and 5xx."""

    def __init__(self, teacher: OpenAIBatchTeacher):
        self.t = teacher
        self.client = httpx.Client(timeout=teacher.timeout_s, headers=teacher._headers)

    def call(self, method: str, path: str, attempts: int | None = None, **kwargs) -> httpx.Response:
        last = ""
        attempts = attempts or self.t.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                resp = self.client.request(method, self.t.base + path, **kwargs)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    return resp
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in RETRY_STATUS:
                    break
            if attempt < attempts:
                time.sleep(backoff(attempt))
        raise BatchApiError(self.t.online.redact(f"{method} {path}: {last}"))

    def upload(self, data: bytes) -> str:
        files = {"file": ("datagen-batch.jsonl", data, "application/jsonl")}
        return self.call("POST", "/files", files=files, data={"purpose": "batch"}).json()["id"]

    def create(self, input_file_id: str) -> dict:
        """Create the batch. A create that timed out or got a 5xx may have happened all the same, so before trying
        again it looks for the batch by its input file: never two batches for one file."""
        body = {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
                "completion_window": self.t.window, "metadata": {"datagen_teacher": self.t.name}}
        for attempt in range(1, self.t.max_attempts + 1):
            try:
                return self.call("POST", "/batches", attempts=1, json=body).json()
            except BatchApiError:
                found = self.find(input_file_id)
                if found is not None:
                    return found
                if attempt == self.t.max_attempts:
                    raise
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def content(self, file_id: str) -> str:
        return self.call("GET", f"/files/{file_id}/content").text

    def find(self, input_file_id: str) -> dict | None:
        """The batch made from this input file, if the provider has one."""
        after = None
        for _ in range(LIST_PAGES):
            page = self.call("GET", "/batches", params={"limit": 100, **({"after": after} if after else {})}).json()
            for b in page.get("data") or []:
                if b.get("input_file_id") == input_file_id:
                    return b
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    def close(self) -> None:
        self.client.close()


def recover(api: _Api, journal: BatchJournal, input_file_id: str) -> str | None:
    """A run stopped after uploading a file and before recording its batch: find the batch by its input file, or
    free its requests when it was never created."""
    found = api.find(input_file_id)
    if found is None:
        journal.forget(input_file_id)
        return None
    journal.submitted(input_file_id, found["id"], found.get("status", "validating"))
    return found["id"]


def _counts(b: dict) -> tuple[int | None, int | None]:
    counts = b.get("request_counts") or {}
    return counts.get("completed"), counts.get("failed")


def _batch_errors(b: dict) -> str | None:
    errors = (b.get("errors") or {}).get("data") or []
    return "; ".join(f"{e.get('code', 'error')}: {e.get('message', '')}".strip() for e in errors[:3]) or None


@dataclass
class _Out:
    batch_id: str
    keys: set[str]  # this stream's requests the batch holds
    since: float = field(default_factory=time.monotonic)
    seen: tuple = ()  # the last (status, completed, failed) noted
    noted: float = 0.0


class _Run:
    """One stream: which of its requests are out in which batch, and what came back."""

    def __init__(self, teacher: OpenAIBatchTeacher, api: _Api, requests: list[GenRequest], options: GenOptions):
        self.t, self.api, self.requests, self.options = teacher, api, requests, options
        self.where = {k: (i, j) for i, r in enumerate(requests) for j, k in enumerate(r.keys)}
        self.got: dict[int, dict[int, Sample]] = {}
        self.ready: list[tuple[int, list[Sample]]] = [(i, []) for i, r in enumerate(requests) if not r.keys]
        self.sent: Counter = Counter()  # batches each request was in during this stream
        self.active: dict[str, _Out] = {}  # input file id -> batch

    def go(self):
        self.adopt()
        out = set().union(*(b.keys for b in self.active.values())) if self.active else set()
        self.submit([k for k in self.where if k not in out])
        next_poll = 0.0
        while self.active:
            if time.monotonic() >= next_poll:
                for input_file_id in list(self.active):
                    self.poll(input_file_id)
                next_poll = time.monotonic() + self.t.poll_seconds
            yield self.take_ready()
            wait = min(HEARTBEAT_SECONDS, next_poll - time.monotonic())
            if self.active and wait > 0:
                time.sleep(wait)
        yield self.take_ready()

    def take_ready(self) -> list[tuple[int, list[Sample]]]:
        ready, self.ready = self.ready, []
        return ready

    def adopt(self) -> None:
        """Batches an earlier run created for these requests: poll them, never send their requests again."""
        for rec in self.t.journal.open_batches():
            mine = set(rec.keys) & self.where.keys()
            if not mine:
                continue
            batch_id = rec.batch_id or self._guard(lambda rec=rec: recover(self.api, self.t.journal, rec.input_file_id))
            if batch_id is None:
                continue
            for key in mine:
                self.sent[key] += 1
            self.active[rec.input_file_id] = _Out(batch_id, mine)
            self.t.journal.note(f"batch {batch_id} ({self.t.name}): sent by an earlier run ({rec.status}); polling "
                                f"it for {len(mine)} requests")

    def submit(self, keys: list[str]) -> None:
        for chunk, data in self._files(keys):
            try:
                input_file_id = self.api.upload(data)
            except BatchApiError as exc:
                self._fail(chunk, f"batch upload failed: {exc}")
                continue
            self.t.journal.submitting(input_file_id, chunk)
            try:
                b = self.api.create(input_file_id)
            except BatchApiError as exc:  # it looked for the batch before giving up: there is none
                self.t.journal.forget(input_file_id)
                self._fail(chunk, f"batch creation failed: {exc}")
                continue
            self.t.journal.submitted(input_file_id, b["id"], b.get("status", "validating"))
            for key in chunk:
                self.sent[key] += 1
            self.active[input_file_id] = _Out(b["id"], set(chunk))
            self.t.journal.note(f"batch {b['id']} ({self.t.name}): submitted {len(chunk)} requests "
                                f"({len(data) / 1e3:,.0f} kB), window {self.t.window}")

    def _files(self, keys: list[str]):
        """(keys, JSONL bytes) per batch, within the line and size limits."""
        chunk: list[str] = []
        lines: list[bytes] = []
        size = 0
        for key in keys:
            i, j = self.where[key]
            req = self.requests[i]
            index = req.sample_indices[j] if req.sample_indices else j
            line = json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                               "body": self.t.online.payload(req, index, self.options)},
                              ensure_ascii=False).encode() + b"\n"
            if chunk and (len(chunk) >= self.t.max_lines or size + len(line) > self.t.max_bytes):
                yield chunk, b"".join(lines)
                chunk, lines, size = [], [], 0
            chunk.append(key)
            lines.append(line)
            size += len(line)
        if chunk:
            yield chunk, b"".join(lines)

    def poll(self, input_file_id: str) -> None:
        out = self.active[input_file_id]
        b = self._guard(lambda: self.api.call("GET", f"/batches/{out.batch_id}").json())
        status = b.get("status", "unknown")
        completed, failed = _counts(b)
        self.t.journal.update(input_file_id, status, completed, failed, _batch_errors(b))
        now = time.monotonic()
        if (status, completed, failed) != out.seen or now - out.noted >= NOTE_EVERY_SECONDS:
            total = (b.get("request_counts") or {}).get("total") or len(out.keys)
            self.t.journal.note(f"batch {out.batch_id} ({self.t.name}): {status}, {completed or 0}/{total} done, "
                                f"{failed or 0} failed, {_elapsed(now - out.since)}")
            out.seen, out.noted = (status, completed, failed), now
        if status in TERMINAL:
            self.collect(input_file_id, b)

    def collect(self, input_file_id: str, b: dict) -> None:
        """The batch is over: every line of its output and error files, then its unanswered requests sent again."""
        out = self.active.pop(input_file_id)
        answered: set[str] = set()
        for name in ("output_file_id", "error_file_id"):
            if b.get(name):
                text = self._guard(lambda name=name: self.api.content(b[name]))
                for line in text.splitlines():
                    key, sample = self._line(line)
                    if key in out.keys and key not in answered and sample is not None:
                        answered.add(key)
                        sample.worker = f"{self.t.label} {out.batch_id}"  # `requests.worker`: which batch
                        self._deliver(key, sample)
        rest = sorted(out.keys - answered)
        if not rest:
            return
        why = _batch_errors(b) or ("its window ended before these requests ran" if b["status"] == "expired"
                                   else "these requests did not run")
        reason = self.t.online.redact(f"batch {out.batch_id} {b['status']}: {why}")
        self.t.journal.requeue(input_file_id, rest, reason)
        again = [k for k in rest if self.sent[k] < self.t.max_attempts]
        self._fail([k for k in rest if self.sent[k] >= self.t.max_attempts],
                   f"{reason} (sent in {self.t.max_attempts} batches)")
        if again:
            self.t.journal.note(f"batch {out.batch_id} ({self.t.name}): {b['status']}; sending {len(again)} "
                                "unanswered requests again in a new batch")
            self.submit(again)

    def _line(self, line: str) -> tuple[str | None, Sample | None]:
        """(custom_id, its sample), or a None sample for a line that never ran (expired, cancelled)."""
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
            text = f"HTTP {resp.get('status_code')}: {json.dumps(resp.get('body'))[:200]}"
        else:
            text = f"{code}: {err.get('message', '')}"
        return key, Sample(text=None, error=self.t.online.redact(text))

    def _deliver(self, key: str, sample: Sample) -> None:
        i, j = self.where[key]
        got = self.got.setdefault(i, {})
        if j in got:
            return
        got[j] = sample
        if len(got) == len(self.requests[i].keys):
            del self.got[i]
            self.ready.append((i, [got[n] for n in range(len(got))]))

    def _fail(self, keys: list[str], error: str) -> None:
        for key in keys:
            self._deliver(key, Sample(text=None, error=self.t.online.redact(error)))

    def _guard(self, fn):
        """The batch API unreachable while batches are out is not a bad reply: stop the run (what came back is
        committed), and the next run polls the same batches."""
        try:
            return fn()
        except BatchApiError as exc:
            raise RunFailed(f"teacher {self.t.name}: the batch API failed ({exc}); the batches sent so far are "
                            "recorded in the store: run again to poll them (nothing is sent twice)") from None


def backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** (attempt - 1))


def _elapsed(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
