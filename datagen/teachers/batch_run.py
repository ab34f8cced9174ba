"""One stream through a provider's batch API, whichever provider: which requests are out in which batch, what came
back, and the journal that makes "never pay twice" hold (teachers/journal.py).

The provider's side is an adapter (`BatchApi`: OpenAI's Files and Batches endpoints in openai_batch.py, Anthropic's
Message Batches in anthropic_batch.py) that builds a batch's lines, creates a batch (looking for it first when a
create may have happened without its reply), polls it, and reads its results. Statuses are OpenAI's words
(`validating`, `in_progress`, `completed`, `expired`, `failed`, `cancelling`, `cancelled`), which the store keeps.

Order matters: the batch's reference (the uploaded file's id, or a local id) is recorded before the batch is created,
and the batch id right after, so a run killed at any point finds its batches again: the next run polls them instead
of creating new ones. A batch that expires, fails or is cancelled puts its unanswered requests back and sends them
again in a new batch, up to `max_attempts` batches per request in one run; after that each is a failed request (a
provider fault: the next run asks again).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from datagen.errors import RunFailed
from datagen.teachers.base import PROVIDER, GenOptions, GenRequest, Sample
from datagen.teachers.journal import BatchJournal

TERMINAL = {"completed", "expired", "failed", "cancelled"}
HEARTBEAT_SECONDS = 1.0  # yield at least this often while waiting, so the caller can commit and Ctrl-C is prompt
NOTE_EVERY_SECONDS = 300  # say how a batch is doing at least this often, and whenever its counts move


class BatchApiError(Exception):
    pass


@dataclass
class Batch:
    """A provider's batch, in the words the store keeps."""

    id: str
    status: str
    completed: int | None = None
    failed: int | None = None
    total: int | None = None
    errors: str | None = None  # why the whole batch failed, when it did
    raw: dict = field(default_factory=dict)


class BatchApi(Protocol):
    def line(self, key: str, body: dict) -> bytes:
        """One request (`body` as the online teacher would send it) in the batch's own form, newline-ended."""

    def prepare(self, data: bytes, keys: list[str]) -> str:
        """What the journal records before the batch exists (an uploaded file's id, or a local id)."""

    def create(self, ref: str, data: bytes, count: int) -> Batch:
        """Create the batch; a create that may have happened without its reply is looked for before it is tried
        again, so one `ref` never makes two batches."""

    def find(self, ref: str, count: int) -> Batch | None:
        """The batch made for `ref`, if the provider has one."""

    def get(self, batch_id: str) -> Batch: ...

    def results(self, batch: Batch) -> list[str]:
        """The lines of an ended batch's results."""

    def parse_line(self, line: str) -> tuple[str | None, Sample | None]:
        """(custom id, its sample), or a None sample for a line that never ran (expired, cancelled)."""

    def cancel(self, batch_id: str) -> Batch: ...

    def close(self) -> None: ...


def recover(api: BatchApi, journal: BatchJournal, rec) -> str | None:
    """A run stopped after recording a batch's reference and before recording its id: find the batch, or free its
    requests when it was never created."""
    found = api.find(rec.input_file_id, len(rec.keys))
    if found is None:
        journal.forget(rec.input_file_id)
        return None
    journal.submitted(rec.input_file_id, found.id, found.status)
    return found.id


def cancel_open(name: str, journal: BatchJournal, api: BatchApi) -> list[tuple[str, str]]:
    """Ask the provider to cancel every open batch in the journal; (batch id, status) of each."""
    out = []
    try:
        for rec in journal.open_batches():
            batch_id = rec.batch_id or recover(api, journal, rec)
            if batch_id is None:
                continue
            b = api.cancel(batch_id)
            journal.update(rec.input_file_id, b.status, b.completed, b.failed)
            out.append((batch_id, b.status))
    finally:
        api.close()
    return out


@dataclass
class _Out:
    batch_id: str
    keys: set[str]  # this stream's requests the batch holds
    since: float = field(default_factory=time.monotonic)
    seen: tuple = ()  # the last (status, completed, failed) noted
    noted: float = 0.0


class BatchRun:
    """One stream. `teacher` gives name, journal, poll_seconds, max_attempts, max_lines, max_bytes, label, `online`
    (the online teacher: payload and redact) and, where the provider has one, `window`."""

    def __init__(self, teacher, api: BatchApi, requests: list[GenRequest], options: GenOptions):
        self.t, self.api, self.requests, self.options = teacher, api, requests, options
        self.where = {k: (i, j) for i, r in enumerate(requests) for j, k in enumerate(r.keys)}
        self.got: dict[int, dict[int, Sample]] = {}
        self.ready: list[tuple[int, list[Sample]]] = [(i, []) for i, r in enumerate(requests) if not r.keys]
        self.sent: Counter = Counter()  # batches each request was in during this stream
        self.active: dict[str, _Out] = {}  # reference -> batch

    def go(self):
        try:
            self.adopt()
            out = set().union(*(b.keys for b in self.active.values())) if self.active else set()
            self.submit([k for k in self.where if k not in out])
            next_poll = 0.0
            while self.active:
                if time.monotonic() >= next_poll:
                    for ref in list(self.active):
                        self.poll(ref)
                    next_poll = time.monotonic() + self.t.poll_seconds
                yield self.take_ready()
                wait = min(HEARTBEAT_SECONDS, next_poll - time.monotonic())
                if self.active and wait > 0:
                    time.sleep(wait)
            yield self.take_ready()
        finally:
            self.api.close()  # batches keep running at the provider: the next run polls them

    def take_ready(self) -> list[tuple[int, list[Sample]]]:
        ready, self.ready = self.ready, []
        return ready

    def adopt(self) -> None:
        """Batches an earlier run created for these requests: poll them, never send their requests again."""
        for rec in self.t.journal.open_batches():
            mine = set(rec.keys) & self.where.keys()
            if not mine:
                continue
            batch_id = rec.batch_id or self._guard(lambda rec=rec: recover(self.api, self.t.journal, rec))
            if batch_id is None:
                continue
            for key in mine:
                self.sent[key] += 1
            self.active[rec.input_file_id] = _Out(batch_id, mine)
            self.t.journal.note(f"batch {batch_id} ({self.t.name}): sent by an earlier run ({rec.status}); polling "
                                f"it for {len(mine)} requests")

    def submit(self, keys: list[str]) -> None:
        for chunk, data in self._chunks(keys):
            try:
                ref = self.api.prepare(data, chunk)
            except BatchApiError as exc:
                self._fail(chunk, f"batch upload failed: {exc}")
                continue
            self.t.journal.submitting(ref, chunk)
            try:
                b = self.api.create(ref, data, len(chunk))
            except BatchApiError as exc:  # it looked for the batch before giving up: there is none
                self.t.journal.forget(ref)
                self._fail(chunk, f"batch creation failed: {exc}")
                continue
            self.t.journal.submitted(ref, b.id, b.status)
            for key in chunk:
                self.sent[key] += 1
            self.active[ref] = _Out(b.id, set(chunk))
            window = getattr(self.t, "window", None)
            self.t.journal.note(f"batch {b.id} ({self.t.name}): submitted {len(chunk)} requests "
                                f"({len(data) / 1e3:,.0f} kB){f', window {window}' if window else ''}")

    def _chunks(self, keys: list[str]):
        """(keys, bytes of their lines) per batch, within the line and size limits."""
        chunk: list[str] = []
        lines: list[bytes] = []
        size = 0
        for key in keys:
            i, j = self.where[key]
            req = self.requests[i]
            index = req.sample_indices[j] if req.sample_indices else j
            line = self.api.line(key, self.t.online.payload(req, index, self.options))
            if chunk and (len(chunk) >= self.t.max_lines or size + len(line) > self.t.max_bytes):
                yield chunk, b"".join(lines)
                chunk, lines, size = [], [], 0
            chunk.append(key)
            lines.append(line)
            size += len(line)
        if chunk:
            yield chunk, b"".join(lines)

    def poll(self, ref: str) -> None:
        out = self.active[ref]
        b = self._guard(lambda: self.api.get(out.batch_id))
        self.t.journal.update(ref, b.status, b.completed, b.failed, b.errors)
        now = time.monotonic()
        if (b.status, b.completed, b.failed) != out.seen or now - out.noted >= NOTE_EVERY_SECONDS:
            self.t.journal.note(f"batch {out.batch_id} ({self.t.name}): {b.status}, {b.completed or 0}/"
                                f"{b.total or len(out.keys)} done, {b.failed or 0} failed, {_elapsed(now - out.since)}")
            out.seen, out.noted = (b.status, b.completed, b.failed), now
        if b.status in TERMINAL:
            self.collect(ref, b)

    def collect(self, ref: str, b: Batch) -> None:
        """The batch is over: every line of its results, then its unanswered requests sent again."""
        out = self.active.pop(ref)
        answered: set[str] = set()
        for line in self._guard(lambda: self.api.results(b)):
            key, sample = self.api.parse_line(line)
            if key in out.keys and key not in answered and sample is not None:
                answered.add(key)
                sample.worker = f"{self.t.label} {out.batch_id}"  # `requests.worker`: which batch
                if sample.error is not None:
                    sample.error = self.t.online.redact(sample.error)
                self._deliver(key, sample)
        rest = sorted(out.keys - answered)
        if not rest:
            return
        why = b.errors or ("its window ended before these requests ran" if b.status == "expired"
                           else "these requests did not run")
        reason = self.t.online.redact(f"batch {out.batch_id} {b.status}: {why}")
        self.t.journal.requeue(ref, rest, reason)
        again = [k for k in rest if self.sent[k] < self.t.max_attempts]
        self._fail([k for k in rest if self.sent[k] >= self.t.max_attempts],
                   f"{reason} (sent in {self.t.max_attempts} batches)")
        if again:
            self.t.journal.note(f"batch {out.batch_id} ({self.t.name}): {b.status}; sending {len(again)} "
                                "unanswered requests again in a new batch")
            self.submit(again)

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
        """Requests the batch API did not answer (an upload or a create refused, batches that kept expiring): the
        provider's fault, so the next run asks again."""
        for key in keys:
            self._deliver(key, Sample(text=None, error=self.t.online.redact(error), error_kind=PROVIDER))

    def _guard(self, fn):
        """The batch API unreachable while batches are out is not a bad reply: stop the run (what came back is
        committed), and the next run polls the same batches."""
        try:
            return fn()
        except BatchApiError as exc:
            raise RunFailed(f"teacher {self.t.name}: the batch API failed ({exc}); the batches sent so far are "
                            "recorded in the store: run again to poll them (nothing is sent twice)") from None


class HttpApi:
    """A batch API's HTTP calls (the adapters' `_Api` build on it): the teacher's `base` URL and headers, retries on
    dropped connections, timeouts, 429 and 5xx (the online teacher's RETRY_STATUS), errors redacted by it."""

    def __init__(self, teacher):
        import httpx

        self.t = teacher
        self.client = httpx.Client(timeout=teacher.timeout_s, headers=teacher._headers)

    def call(self, method: str, path: str, attempts: int | None = None, **kwargs):
        import httpx

        from datagen.teachers.openai_teacher import RETRY_STATUS

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


def backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** (attempt - 1))


def _elapsed(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"
