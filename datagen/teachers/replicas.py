"""Engine replicas on a Ray cluster (`datagen run --ray ADDRESS`, `replicas: N` on a vllm or transformers teacher).

Each replica is a Ray actor holding its own engine (the same VLLMTeacher or TransformersTeacher as in-process). The
driver, `RayTeacher`, is a Teacher like any other: the run loop streams requests to it and commits what comes back;
the store keeps one writer, the driver, which is what keeps resume exact.

- Feeding: requests arrive prefix-ordered; the driver hands each replica contiguous blocks of them (so a shared prompt
  prefix stays on one engine's prefix cache) and keeps every replica holding about twice what its engine runs at
  once. A vLLM replica streams its inbox through one long engine stream, so it never waits on a block's tail.
- Faults: a replica that dies is restarted by Ray (`max_restarts=-1`); the requests it held and had not handed back
  are given out again, so every sample is recorded exactly once.
- Stopping: Ctrl-C or an error on the driver stops the replicas' streams; closing the teacher kills the actors. If
  the driver is killed (-9), Ray ends the job's actors once it notices the driver is gone (see specs/scale.md).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
from typing import Any
from collections.abc import Iterator

from datagen.errors import UserError
from datagen.teachers.base import PROVIDER, WAIT, GenOptions, GenRequest, Sample

BLOCK = 16  # requests handed to a replica at a time
POLL_SECONDS = 0.5


def connect(address: str) -> None:
    """Join (or, for `local`, start) the Ray cluster for this run."""
    try:
        import ray
    except ImportError:
        raise UserError("`--ray` needs Ray: pip install 'datagen[ray]' (ray==2.60.0)") from None
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address == "local":  # a new cluster for this run, never one a stale /tmp/ray file points at
        ray.init(address="local", **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"--ray {address}: cannot join the Ray cluster ({exc}); start one with `ray start --head` "
                            "or use `--ray local`") from None


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class Replica:
    """The actor's body: one engine, an inbox the driver fills, an outbox it empties."""

    def __init__(self, index: int, kind: str, name: str, model_path: str, settings: dict):
        # Several replicas may share a node: let the OS place their threads (Ray sets OMP_NUM_THREADS to the CPUs
        # the actor was given) rather than each binding its threads to the same cores.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        self.index, self.kind = index, kind
        self.instance = uuid.uuid4().hex  # a restarted actor is a new instance: the driver notices and re-sends
        if kind == "vllm":
            from datagen.teachers.vllm_teacher import VLLMTeacher

            self.teacher = VLLMTeacher(name, model_path, settings)
        else:
            from datagen.teachers.transformers_teacher import TransformersTeacher

            self.teacher = TransformersTeacher(name, model_path, **settings)
        self.lock = threading.Lock()
        self.inbox: collections.deque = collections.deque()
        self.outbox: list = []
        self.ended = False
        self.stopped = False
        self.running = False
        self.options: GenOptions | None = None
        self.error: str | None = None
        self.thread: threading.Thread | None = None

    def start(self, options: GenOptions) -> str:
        """Begin streaming (one step's options) over what is in the inbox and what comes; returns this instance."""
        self._stop_loop()
        with self.lock:
            self.options, self.ended, self.stopped, self.error = options, False, False, None
            self._run()
        return self.instance

    def submit(self, items: list[tuple[int, GenRequest]]) -> None:
        """More requests; a stream that had ended (told `end`, inbox empty) takes them up again."""
        with self.lock:
            self.inbox.extend(items)
            self.ended = False
            if not self.running and not self.stopped and self.options is not None:
                self._run()

    def _run(self) -> None:  # under the lock
        self.running = True
        self.thread = threading.Thread(target=self._loop, args=(self.options,), daemon=True)
        self.thread.start()

    def end(self) -> None:
        self.ended = True

    def poll(self) -> tuple[str, list[tuple[int, list[Sample]]], bool, str | None]:
        """This instance, what finished since the last poll, whether the stream is over, and the error that ended
        it, if any."""
        with self.lock:
            out, self.outbox = self.outbox, []
            return self.instance, out, not self.running, self.error

    def stop(self) -> None:
        """End the stream and drop what it had not done (the driver gives that out again, or the run stopped)."""
        self._stop_loop()
        with self.lock:
            self.inbox.clear()
            self.outbox = []

    def _stop_loop(self) -> None:
        self.stopped = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.thread = None

    def _feed(self, order: list[int]) -> Iterator:
        """The inbox as a request feed: WAIT while it is empty and more may come; records the order taken."""
        while not self.stopped:
            with self.lock:
                item = self.inbox.popleft() if self.inbox else None
            if item is not None:
                order.append(item[0])
                yield item[1]
            elif self.ended:
                return
            else:
                yield WAIT

    def _loop(self, options: GenOptions) -> None:
        try:
            while True:
                if self.kind == "vllm":  # one long engine stream over the inbox
                    order: list[int] = []
                    self._drain(self.teacher.stream(self._feed(order), options), order)
                else:  # transformers: batches as they come
                    while not self.stopped and not (self.ended and not self.inbox):
                        with self.lock:
                            items = [self.inbox.popleft() for _ in range(min(len(self.inbox), 64))]
                        if not items:
                            time.sleep(0.01)
                            continue
                        self._drain(self.teacher.stream([r for _, r in items], options), [g for g, _ in items])
                with self.lock:  # requests that came after the end (a dead replica's, given out again): go on
                    if self.stopped or not self.inbox:
                        self.running = False
                        return
        except Exception as exc:  # noqa: BLE001  reported to the driver, which fails the requests it held
            with self.lock:
                self.error = f"replica {self.index}: {type(exc).__name__}: {exc}"
                self.running = False

    def _drain(self, stream, order: list[int]) -> None:
        worker = f"replica-{self.index}"
        for finished in stream:
            for _i, samples in finished:
                for s in samples:
                    s.worker = worker
            with self.lock:
                self.outbox += [(order[i], samples) for i, samples in finished]
            if self.stopped:
                stream.close()
                return


class RayTeacher:
    """The driver's side: `replicas` actors, fed and polled as one Teacher."""

    def __init__(self, name: str, kind: str, model_path: str, settings: dict, replicas: int, gpus: int = 1):
        self.name = name
        self.kind, self.model_path, self.settings = kind, model_path, settings
        self.count, self.gpus = replicas, gpus
        self.actors: list = []
        self.window = 512  # requests a replica may hold (vLLM: twice its 256 scheduled sequences)

    def _start(self) -> list:
        if self.actors:
            return self.actors
        import ray

        resources = ray.cluster_resources()
        if resources.get("GPU", 0) > 0:
            placement = {"num_gpus": self.gpus}  # an engine's tensor-parallel GPUs
        else:
            placement = {"num_cpus": max(1, int(resources.get("CPU", 1)) // self.count)}
        # One method at a time, in the order the driver called them (start, submit, end, poll): the engine runs in
        # the actor's own thread, so every method returns at once. A call that meets a restarting actor waits for
        # the new instance (max_task_retries); the driver sees the new instance in `poll` and gives out again what
        # the old one held.
        actor = ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=1, **placement)(Replica)
        self.actors = [actor.remote(k, self.kind, self.name, self.model_path, self.settings)
                       for k in range(self.count)]
        return self.actors

    def stream(self, requests: list[GenRequest], options: GenOptions) -> Iterator[list[tuple[int, list[Sample]]]]:
        import ray

        actors = self._start()
        pending = collections.deque(range(len(requests)))
        held: list[dict[int, int]] = [{} for _ in actors]  # replica -> {request index: samples}
        # Waits for the engines to load; a replica that dies from here on comes back as another instance.
        instances: list[str | None] = ray.get([a.start.remote(options) for a in actors])
        polls: dict[int, Any] = {}
        ended = [False] * len(actors)
        try:
            while pending or any(held):
                self._fill(actors, requests, pending, held, ended)
                for k, a in enumerate(actors):
                    polls.setdefault(k, a.poll.remote())
                ready, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=POLL_SECONDS)
                finished: list[tuple[int, list[Sample]]] = []
                for k in [k for k, ref in polls.items() if ref in ready]:
                    try:
                        instance, got, over, error = ray.get(polls.pop(k))
                    except ray.exceptions.RayActorError:  # gone for good (its node died): others take its work
                        instance, got, over, error = None, [], False, None
                    for i, samples in got:  # only from the replica that holds it: nothing is recorded twice
                        if held[k].pop(i, None) is not None:
                            finished.append((i, samples))
                    if instance is None or instances[k] not in (None, instance):
                        # restarted (or lost): what the old instance held goes out again
                        pending.extendleft(sorted(held[k], reverse=True))
                        held[k], ended[k] = {}, False
                        if instance is not None:
                            actors[k].start.remote(options)
                    instances[k] = instance
                    if over and error and held[k]:  # the engine failed: its requests fail with the reason (not theirs)
                        finished += [(i, [Sample(text=None, error=error, error_kind=PROVIDER) for _ in requests[i].keys])
                                     for i in held[k]]
                        held[k] = {}
                if not finished:  # nothing back yet: poll again in a moment, not in a loop that takes a core
                    time.sleep(POLL_SECONDS / 5)
                yield finished
        finally:
            for a in actors:
                a.stop.remote()

    def _fill(self, actors: list, requests: list[GenRequest], pending, held, ended) -> None:
        """Hand out contiguous blocks, each to the replica holding least, until each holds `window` requests; tell
        the replicas when there are no more."""
        while pending:
            k = min(range(len(actors)), key=lambda j: len(held[j]))
            if len(held[k]) >= self.window:
                break
            block = [pending.popleft() for _ in range(min(BLOCK, len(pending)))]
            for i in block:
                held[k][i] = len(requests[i].keys)
            actors[k].submit.remote([(i, requests[i]) for i in block])
            ended[k] = False  # the replica goes on past an `end` it had been told; tell it again below
        for k, a in enumerate(actors):
            if not pending and not ended[k]:
                a.end.remote()
                ended[k] = True

    def start(self) -> bool:
        return False  # the replicas start with the first stream

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001  already gone
                pass
        self.actors = []
