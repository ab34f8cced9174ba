"""Any OpenAI-compatible `/v1/chat/completions` server over HTTP (vLLM's server, llama.cpp, hosted APIs).

One HTTP request per sample (not every server supports `n`), bounded concurrency, retries with exponential backoff
and jitter on 429, 5xx, timeouts and dropped connections, `Retry-After` honoured. A 429 does not count as an attempt:
a rate-limited request waits and asks again for up to `rate_limit_wait_s`, so a rate limit costs time, not rows. A
server's limit is learned from its 429s and requests are paced under it (ratelimit.AdaptiveRate; `adaptive_rate`). A
server that cannot be reached (no connection, timeouts, 502/503/504) does not use up attempts either: the server
pool's circuit breaker pauses it, probes it and resumes (servers.py), and a request waits for it up to
`down_limit_s`, so an outage costs time, not rows. A sample that still fails after `max_attempts` other faults (a
500, a garbled reply) comes back with its last error; it never raises, so the run
goes on. `timeout_s` bounds each attempt
as a whole (a server that trickles bytes cannot hold a request forever). Error texts never contain the API key, even
when a server echoes it back.

With `GenOptions.reasoning` set, a trace the server returns in `message.reasoning_content` or `message.reasoning`
(DeepSeek's API, `vllm serve --reasoning-parser`) becomes the sample's reasoning and `content` its text; without such a
field a leading `<think>...</think>` block is split off the content. `extra_body` (the teacher's, with the step's
merged over it) goes into every request body as is; its key-like values are redacted from errors like the API key.

Replies stream back as they finish: the teacher runs its own event loop between yields, keeping `max_concurrency`
requests in flight. Ctrl-C and SIGTERM cancel what is in flight at once (the loop's own signal handlers wake it even
when the OS hands the signal to another thread) and raise KeyboardInterrupt / Terminated in the caller, which has
already been handed everything that finished.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from datagen import extra_body as bodies
from datagen.errors import Terminated
from datagen.reasoning import from_field
from datagen.teachers.base import (PROVIDER, REQUEST, GenOptions, GenRequest, Sample, TokenLogprobs,
                                   fault_of_status, split_sample)
from datagen.teachers.ratelimit import ConcurrencyWindow, Meter, RateLimiter
from datagen.teachers.servers import ServerPool
from datagen.teachers.toolcalls import calls_as_text
from datetime import UTC

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
# the server (or the proxy before it) cannot take requests now; 529: Anthropic's "overloaded"
UNAVAILABLE_STATUS = {502, 503, 504, 529}
HEARTBEAT_SECONDS = 1.0  # the stream yields at least this often, even with nothing finished, so the caller can commit


class OpenAITeacher:
    ENDPOINT = "/chat/completions"  # under each base_url

    def __init__(self, name: str, *, base_url: str | list[str], model: str, api_key: str | None, max_concurrency: int = 16,
                 timeout_s: float = 120, max_attempts: int = 4, requests_per_minute: int | None = None,
                 tokens_per_minute: int | None = None, backoff_base_s: float = 0.5, backoff_max_s: float = 30,
                 rate_limit_wait_s: float = 600, adaptive_rate: bool = True, down_limit_s: float = 300,
                 extra_body: dict | None = None):
        self.name = name
        self.servers = ServerPool(base_url if isinstance(base_url, list) else [base_url], self.ENDPOINT)
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._secret = api_key or None
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.rate_limit_wait_s = rate_limit_wait_s
        self.down_limit_s = down_limit_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute, adaptive=adaptive_rate)
        self.adaptive = adaptive_rate
        self.window = ConcurrencyWindow(max_concurrency)
        self.meter = Meter()
        self.extra_body = extra_body or None

    def stream(self, requests: list[GenRequest], options: GenOptions):
        """One HTTP request per sample, `max_concurrency` in flight; yields what finished (see base.Teacher)."""
        jobs = iter([(i, j, index) for i, r in enumerate(requests)
                     for j, index in enumerate(r.sample_indices or range(len(r.keys)))])
        got: dict[int, dict[int, Sample]] = {}
        for i, r in enumerate(requests):
            if not r.keys:
                got[i] = {}
        loop = asyncio.new_event_loop()
        client = loop.run_until_complete(self._client())
        signals = _Signals(loop)
        inflight: dict[asyncio.Task, tuple[int, int]] = {}
        self.meter.open()
        try:
            ready = [(i, []) for i in list(got) if not requests[i].keys]
            for i, _ in ready:
                got.pop(i)
            while True:
                room = (self.window.allowed if self.adaptive else self.max_concurrency) - len(inflight)
                for i, j, index in _take(jobs, room):
                    task = loop.create_task(self._sample(client, requests[i], index, options))
                    inflight[task] = (i, j)
                if not inflight:
                    break
                waiter = loop.create_task(asyncio.wait(list(inflight), timeout=HEARTBEAT_SECONDS,
                                                       return_when=asyncio.FIRST_COMPLETED))
                done, _ = signals.run(waiter)
                for task in done:
                    i, j = inflight.pop(task)
                    got.setdefault(i, {})[j] = task.result()
                    if len(got[i]) == len(requests[i].keys):
                        samples = got.pop(i)
                        ready.append((i, [samples[k] for k in range(len(samples))]))
                yield ready
                ready = []
            if ready:
                yield ready
        finally:
            signals.remove()
            loop.run_until_complete(_cancel_all(list(inflight), client))
            loop.close()
            self.meter.close()

    def start(self) -> bool:
        return False  # nothing to load: each stream opens its own client

    def pace(self) -> str | None:
        """What the adaptive client settled on, where it had to adapt (the run's log and summary say it)."""
        if not self.adaptive:
            return None
        w, rate = self.window, self.limiter.learned_rate
        if not w.cuts and rate is None:
            return None
        parts = [f"concurrency {w.allowed} now (at most {int(w.peak)} of max_concurrency {w.ceiling}, cut {w.cuts} "
                 f"times)"]
        if rate is not None:
            parts.append(f"paced at {rate:.1f} requests/s, learned from the server's 429s")
        return "; ".join(parts)

    def close(self) -> None:
        pass  # each stream opens and closes its own client

    async def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        return httpx.AsyncClient(timeout=self.timeout_s, limits=limits, headers=self._headers)

    def payload(self, req: GenRequest, sample_index: int, options: GenOptions) -> dict[str, Any]:
        s = options.sampling
        body: dict[str, Any] = {"model": self.model, "messages": req.messages, "max_tokens": s.max_tokens}
        for key in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                    "repetition_penalty", "stop"):
            value = getattr(s, key)
            if value is not None:
                body[key] = value
        if s.seed is not None:
            body["seed"] = s.seed + sample_index  # samples of one prompt must differ
        if options.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = options.logprobs
        if options.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": options.json_schema}}
        if options.tools:
            body["tools"] = options.tools
        body.update(bodies.merge(self.extra_body, options.extra_body) or {})
        return body

    def parse(self, resp: httpx.Response, options: GenOptions) -> Sample:
        """A 200 reply as a sample (its `error` and `error_kind` set when it is not a usable one)."""
        return _parse_response(resp, options.reasoning is not None)

    async def _sample(self, client: httpx.AsyncClient, req: GenRequest, index: int, options: GenOptions) -> Sample:
        body = self.payload(req, index, options)
        estimate = options.sampling.max_tokens + sum(len(m.get("content") or "") for m in req.messages) // 4
        start = time.monotonic()
        last_error = "not attempted"
        # A 429 is the server asking to slow down, not the request's fault: it does not use up one of max_attempts,
        # and the request waits (Retry-After, else back-off) for up to rate_limit_wait_s before it counts as failed.
        # A server that cannot be reached (no connection, a timeout, 502/503/504) is not the request's fault either:
        # such attempts do not count while the server has been unreachable for under down_limit_s (the server pool's
        # breaker paces them: pause, probe, resume).
        failures = calls = limited_in_a_row = down_in_a_row = 0
        down_since: float | None = None
        kind = PROVIDER  # whose fault the failure is, if it fails (base.fault_of_status)
        while True:
            calls += 1
            await self.limiter.acquire(estimate)
            retry_after: float | None = None
            limited = unreachable = False
            server, probe = await self.servers.acquire()
            server_ok = False
            attempt_start = time.monotonic()
            self.meter.begin()
            resp = None
            try:
                resp = await asyncio.wait_for(self._post(client, server, body, req, options), self.timeout_s)
            except TimeoutError:
                last_error = f"timed out after {self.timeout_s:g} s"
                self.window.congested()
                unreachable = True
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, httpx.TimeoutException):
                    self.window.congested()
                unreachable = True
            else:
                # a 4xx other than a rate limit is the request's fault, not the server's
                server_ok = resp.status_code == 200 or resp.status_code not in RETRY_STATUS
                if resp.status_code == 200:
                    self.limiter.success()
                    sample = self.parse(resp, options) if req.continuation is None else _parse_score(resp, req, options)
                    self.window.success(time.monotonic() - attempt_start, sample.completion_tokens)
                    if sample.error is None:
                        sample.seconds = time.monotonic() - start
                        sample.worker = server.label
                        if options.reasoning is not None:
                            split_sample(sample, options.reasoning)  # a trace written inline, in the content
                        return sample
                    last_error = sample.error  # a garbled 200 (cut-off JSON) is worth another try ...
                    if sample.error_kind == REQUEST:  # ... a refusal or an empty reply is the request's own
                        kind = REQUEST
                        break
                else:
                    last_error = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    if resp.status_code not in RETRY_STATUS:
                        kind = fault_of_status(resp.status_code)
                        break
                    limited = resp.status_code == 429
                    unreachable = resp.status_code in UNAVAILABLE_STATUS
                    if limited:
                        self.limiter.limited()
                        self.window.congested()
                    retry_after = _retry_after(resp)
                    # Retry-After holds every request of the teacher, except a 429's once the pace is learned:
                    # then the pacing slows them all and only the refused request waits it out
                    if retry_after is not None and not (limited and self.limiter.learned_rate is not None):
                        self.limiter.pause(min(retry_after, self.backoff_max_s * 4))
            finally:
                self.servers.release(server, server_ok, probe)
                self.meter.end(resp is not None and resp.status_code == 200, limited)
            if unreachable:
                down_since = down_since if down_since is not None else attempt_start
                if time.monotonic() - down_since < self.down_limit_s:
                    down_in_a_row += 1
                    await asyncio.sleep(self._backoff(min(down_in_a_row, 4), retry_after))
                    continue
                last_error += f"; unreachable for {self.down_limit_s:g} s (down_limit_s)"
                break
            down_since, down_in_a_row = None, 0
            if limited:
                limited_in_a_row += 1
                if time.monotonic() - start >= self.rate_limit_wait_s:
                    last_error += f"; still rate limited after {self.rate_limit_wait_s:g} s (rate_limit_wait_s)"
                    break
                await asyncio.sleep(self._backoff(min(limited_in_a_row, 6), retry_after))
                continue
            limited_in_a_row = 0
            failures += 1
            if failures >= self.max_attempts:
                break
            await asyncio.sleep(self._backoff(failures, retry_after))
        error = f"{last_error} (after {calls} attempt{'s' if calls > 1 else ''})"
        return Sample(text=None, error=self.redact(error, options.extra_body), error_kind=kind,
                      seconds=time.monotonic() - start)

    async def _post(self, client: httpx.AsyncClient, server, body: dict, req: GenRequest,
                    options: GenOptions) -> httpx.Response:
        """One attempt's HTTP call: the chat completion, or (a request with a `continuation`) scoring given text on
        vLLM's OpenAI-compatible server: its /tokenize renders the messages with the chat template and tokenizes the
        text, and /v1/completions reads prompt and text (`prompt_logprobs`: its top k at every token), so the text's
        tokens sit exactly where a reply the model wrote would. A server without /tokenize answers 404 here, and the
        request fails with what to use instead."""
        if req.continuation is None:
            return await client.post(server.url, json=body)
        base = server.url.removesuffix(self.ENDPOINT)
        root = base.removesuffix("/v1")
        parts = []
        for ask in ({"messages": req.messages, "add_generation_prompt": True},
                    {"prompt": req.continuation, "add_special_tokens": False}):
            got = await client.post(root + "/tokenize", json={"model": self.model, **ask})
            if got.status_code != 200:
                return _cannot_score(got, "POST /tokenize")
            tokens = _json_field(got, "tokens")
            if not isinstance(tokens, list):
                return httpx.Response(400, text="POST /tokenize gave no `tokens`: this server cannot score given "
                                                "text (a score needs vLLM's OpenAI-compatible server, or a vllm or "
                                                "transformers teacher)")
            parts.append(tokens)
        prompt, ids = parts
        resp = await client.post(base + "/completions", json={
            "model": self.model, "prompt": prompt + ids, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": options.logprobs})
        resp.extensions["datagen_score"] = (len(prompt), ids)
        return resp

    def redact(self, text: str, step_body: dict | None = None) -> str:
        """A server may echo the key (or a key-like extra_body value) back in an error body; it must not reach the
        store."""
        if self._secret:
            text = text.replace(self._secret, "[api key]")
        for value in bodies.secret_values(bodies.merge(self.extra_body, step_body)):
            text = text.replace(value, bodies.REDACTED)
        return text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s * 4)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter spreads retries so they do not arrive in a burst


async def _cancel_all(tasks: list[asyncio.Task], client: httpx.AsyncClient) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.aclose()


def _take(it, n: int) -> list:
    out = []
    for _ in range(max(0, n)):
        item = next(it, None)
        if item is None:
            break
        out.append(item)
    return out


class _Signals:
    """Ctrl-C and SIGTERM cancel the loop's current wait through the loop's own signal handlers, which also wake it.

    Python's default handlers only run when the main thread runs bytecode. When the OS hands the signal to another
    thread (DuckDB's, the resolver's) while every request in flight is waiting on a slow server, the main thread
    sleeps in the selector until a reply comes, which can be minutes. The loop's handlers wake it at once. The
    handlers that were there before (the CLI's SIGTERM handler) are put back afterwards.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.waiter: asyncio.Task | None = None
        self.received: int | None = None
        self.previous: dict[int, object] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
                self.previous[sig] = previous
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no unix signals
                pass

    def _on_signal(self, sig: int) -> None:
        self.received = sig
        if self.waiter is not None:
            self.waiter.cancel()

    def run(self, waiter: asyncio.Task):
        self.waiter = waiter
        try:
            if self.received is not None:  # a signal came while the caller had the stream's last yield
                waiter.cancel()
            return self.loop.run_until_complete(waiter)
        except asyncio.CancelledError:
            if self.received is None:
                raise
        finally:
            self.waiter = None
        raise Terminated() if self.received == signal.SIGTERM else KeyboardInterrupt()

    def remove(self) -> None:
        for sig, previous in self.previous.items():
            try:
                self.loop.remove_signal_handler(sig)
                signal.signal(sig, previous)
            except (NotImplementedError, RuntimeError, ValueError, TypeError):
                pass


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the other form: an HTTP date
        from datetime import datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None  # unreadable: fall back to exponential backoff


def _json_field(resp: httpx.Response, key: str):
    try:
        data = resp.json()
    except json.JSONDecodeError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def _cannot_score(resp: httpx.Response, what: str) -> httpx.Response:
    """A server's refusal to tokenize, said as why it cannot score (a 404 or 405: it has no such endpoint)."""
    if resp.status_code not in (404, 405):
        return resp
    return httpx.Response(resp.status_code, text=f"{what} is not there: this server cannot score given text (a score "
                          "needs vLLM's OpenAI-compatible server, or a vllm or transformers teacher)")


def _parse_score(resp: httpx.Response, req: GenRequest, options: GenOptions) -> Sample:
    """A /v1/completions reply with `prompt_logprobs` as the scored text's sample (see OpenAITeacher._post)."""
    from datagen.teachers.scoring import scored_positions, spell

    head, ids = resp.extensions.get("datagen_score", (0, []))
    try:
        data = resp.json()
        rows = data["choices"][0].get("prompt_logprobs")
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        return Sample(text=None, error=f"malformed reply ({type(exc).__name__}): {resp.text[:200]!r}",
                      error_kind=PROVIDER)
    if not ids:
        return Sample(text=None, error="the response to score is empty", error_kind=REQUEST)
    if not isinstance(rows, list) or len(rows) < head + len(ids):
        return Sample(text=None, error="the server returned no prompt_logprobs: it cannot score given text (vLLM's "
                                       "OpenAI-compatible server can)", error_kind=REQUEST)
    positions, pieces = [], []
    for j, tid in enumerate(ids):
        entry = {int(k): v for k, v in (rows[head + j] or {}).items()}
        positions.append({t: (v["logprob"], v.get("rank") or 1) for t, v in entry.items()})
        pieces.append((entry.get(tid) or {}).get("decoded_token") or "")
    strings = spell(pieces, req.continuation) or pieces
    usage = data.get("usage") or {}
    return Sample(text=req.continuation, finish_reason="scored", prompt_tokens=usage.get("prompt_tokens"),
                  completion_tokens=0, logprobs=scored_positions(ids, strings, positions, options.logprobs))


def _parse_response(resp: httpx.Response, reasoning: bool = False) -> Sample:
    """A 200 reply as a sample; with `reasoning`, a reply that is all trace (cut inside it) is a sample too."""
    try:
        data = resp.json()
    except json.JSONDecodeError as exc:  # a body cut off on the way: the provider's fault, asked again
        return Sample(text=None, error=f"malformed reply ({type(exc).__name__}): {resp.text[:200]!r}",
                      error_kind=PROVIDER)
    return parse_completion(data, resp.text, reasoning)


def parse_completion(data, raw: str, reasoning: bool = False) -> Sample:
    """A chat completion's body (a dict) as a Sample; `raw` is shown when it is not one. The batch API's output
    lines carry the same body. With `reasoning`, a reply that is all trace (cut inside it) is a sample too."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        text = message["content"]
    except (KeyError, IndexError, TypeError) as exc:
        return Sample(text=None, error=f"malformed reply ({type(exc).__name__}): {raw[:200]!r}", error_kind=PROVIDER)
    # DeepSeek's API and older vLLM servers name the trace `reasoning_content`, newer vLLM servers `reasoning`
    trace = message.get("reasoning_content") or message.get("reasoning")
    if message.get("tool_calls"):  # stored in the text, in the one form every backend's calls take
        text = calls_as_text(text, message["tool_calls"])
    if text is None and message.get("refusal"):  # structured outputs: the model declined to answer
        return Sample(text=None, error=f"refused: {str(message['refusal'])[:200]}", error_kind=REQUEST)
    if text is None and not (trace and reasoning):
        return Sample(text=None, error="reply has no message content", error_kind=REQUEST)
    usage = data.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    finish = choice.get("finish_reason")
    return Sample(
        text=text or "",
        finish_reason=finish,
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        logprobs=_parse_logprobs(choice.get("logprobs")),
        reasoning=from_field(trace, text, finish, details.get("reasoning_tokens")) if isinstance(trace, str) and trace
        else None,
    )


def _parse_logprobs(block: dict | None) -> list[TokenLogprobs] | None:
    if not block or not block.get("content"):
        return None
    out = []
    for item in block["content"]:
        top = item.get("top_logprobs") or []
        out.append(TokenLogprobs(
            token=item.get("token", ""), token_id=None, logprob=float(item.get("logprob", 0.0)),
            top_tokens=[t.get("token", "") for t in top], top_ids=[None] * len(top),
            top_logprobs=[float(t.get("logprob", 0.0)) for t in top],
        ))
    return out
