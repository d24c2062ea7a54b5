"""Admission and continuous batching: which requests decode together, who waits, in which order.

One thread (``Scheduler.run``) owns the model. At every step it admits waiting requests (FIFO)
into free batch slots, feeds each running request either a chunk of its prompt or its last
token, and hands out the sampled tokens: new requests join at the next step, finished ones
leave at once. A request's text goes into its own queue, which its HTTP handler drains, so a
client that reads slowly (or not at all) never holds the step loop. ``cancel`` is checked before
every step: a cancelled request stops at its next token. Beyond ``max_batch`` running and
``max_queue`` waiting, ``submit`` refuses (the server answers 503 with ``Retry-After``).

No torch here: the model side is ``model.BatchRunner`` behind ``model.LocalModel``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import IncrementalDecoder, Prompt, SamplingParams

logger = logging.getLogger("workers.inference")

POLL_SECONDS = 0.25  # how often a handler waiting on its request checks that its client is still there


class QueueFull(Exception):
    """Every batch slot is taken and the waiting line is at its bound."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the worker is at capacity; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Request:
    """One generation, from ``submit`` to its ``end`` event.

    Events on ``events``: ``("text", str)``, then ``("end", finish_reason, completion_tokens)``
    or ``("error", message)``. finish_reason: stop | length | cancelled.
    """

    prompt: Prompt
    params: SamplingParams
    id: str = field(default_factory=lambda: f"local-{uuid.uuid4().hex[:24]}")
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"  # queued -> running -> done
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None
    # engine side
    seq: Any = None
    fed: int = 0  # prompt tokens already in the cache
    last_token: int | None = None
    decoder: IncrementalDecoder | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def done(self) -> bool:
        return self.state == "done"


class Scheduler:
    """FIFO admission into a batch of at most ``max_batch`` sequences; one step at a time."""

    def __init__(self, model: Any, max_batch: int = 4, max_queue: int = 16, prefill_chunk: int = 64) -> None:
        self.model = model
        self.max_batch = max(1, min(max_batch, model.runner.max_slots))
        self.max_queue = max(0, max_queue)
        self.prefill_chunk = max(1, prefill_chunk)
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._stop = False
        self.thread: threading.Thread | None = None
        self.served = 0
        self.steps = 0
        self.batch_rows = 0  # running requests summed over steps (mean batch = batch_rows / steps)
        self._mean_seconds = 0.0  # moving average of a request's time in the batch (Retry-After)

    # -- what the server sees ---------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._running)

    def position(self, request: Request) -> int:
        """1-based place in the waiting line; 0 once running (or gone)."""
        with self._lock:
            try:
                return self._waiting.index(request) + 1
            except ValueError:
                return 0

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the line ahead over the batch, at the mean
        time a request spends in the batch (5 s before any has finished)."""
        per_request = self._mean_seconds or 5.0
        ahead = len(self._waiting) + 1
        return max(1, min(300, math.ceil(per_request * ahead / self.max_batch)))

    def stats(self) -> dict[str, Any]:
        return {
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
            "steps": self.steps,
            "mean_batch": round(self.batch_rows / self.steps, 2) if self.steps else 0.0,
        }

    def submit(self, request: Request) -> None:
        """Queue ``request`` (FIFO); ``QueueFull`` when the batch and the line are full."""
        with self._lock:
            if len(self._running) + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(self.retry_after())
            self._waiting.append(request)
            self._lock.notify_all()

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="scheduler", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def run(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not self._running and not self._waiting:
                    self._lock.wait()
                if self._stop:
                    break
            try:
                self.step()
            except Exception as exc:  # never let the loop die: fail what was in flight, go on
                logger.exception("scheduler step failed")
                for request in list(self._running):
                    self._running.remove(request)
                    try:
                        self.model.runner.close(request.seq)
                    except Exception:
                        logger.exception("freeing the slot of %s failed", request.id)
                    request.state = "done"
                    request.events.put(("error", f"Generation error: {exc}"))
        for request in [*self._running, *self._waiting]:
            self._finish(request, "cancelled")

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def _admit(self) -> None:
        with self._lock:
            for request in [r for r in self._waiting if r.cancelled.is_set()]:
                self._waiting.remove(request)
                request.state, request.finish_reason = "done", "cancelled"
                request.finished = time.monotonic()
                request.events.put(("end", "cancelled", 0))
            while self._waiting and len(self._running) < self.max_batch:
                request = self._waiting.popleft()
                request.state = "running"
                request.started = time.monotonic()
                request.seq = self.model.new_sequence(request.params)
                request.decoder = IncrementalDecoder(
                    self.model.decode, request.params.stop, lambda text, r=request: r.events.put(("text", text))
                )
                self.model.runner.open(request.seq, request.prompt.ids)
                self._running.append(request)

    def step(self) -> None:
        """Admit, drop the cancelled, run one batched forward pass, hand out the tokens."""
        self._admit()
        for request in [r for r in self._running if r.cancelled.is_set()]:
            self._finish(request, "cancelled")
        if not self._running:
            return
        items = []
        budget = self.prefill_chunk
        for request in self._running:
            prompt = request.prompt.ids
            if request.fed < len(prompt):
                if budget <= 0:
                    continue  # its prompt waits for the next step; the others decode meanwhile
                chunk = prompt[request.fed : request.fed + budget]
                budget -= len(chunk)
                request.fed += len(chunk)
                items.append((request, chunk, request.fed == len(prompt)))
            else:
                items.append((request, [request.last_token], True))
        self.steps += 1
        self.batch_rows += len(items)
        try:
            tokens = self.model.runner.step([(r.seq, chunk, want) for r, chunk, want in items])
        except Exception as exc:  # the whole batch fails; the worker keeps serving
            logger.exception("batch step failed (%d requests)", len(items))
            for request, _, _ in items:
                self._finish(request, "error", f"Generation error: {exc}")
            return
        for (request, _, _), token in zip(items, tokens, strict=True):
            if token is not None:
                self._take(request, token)

    def _take(self, request: Request, token: int) -> None:
        """A sampled token: count it, stream its text, end the request if it is its last."""
        request.completion_tokens += 1
        request.last_token = token
        if token in request.seq.eos_ids:
            self._finish(request, "stop")
            return
        if request.decoder.push(token):  # completed a stop string
            self._finish(request, "stop")
        elif request.completion_tokens >= request.prompt.max_new_tokens:
            self._finish(request, "length")
        elif request.cancelled.is_set():
            self._finish(request, "cancelled")

    def _finish(self, request: Request, reason: str, message: str | None = None) -> None:
        if request.done:
            return
        with self._lock:
            if request in self._waiting:
                self._waiting.remove(request)
        if request in self._running:
            self._running.remove(request)
            self.model.runner.close(request.seq)
        if reason not in ("cancelled", "error") and request.decoder is not None:
            request.decoder.finish()
        request.state = "done"
        request.finish_reason = reason
        request.finished = time.monotonic()
        if request.started is not None:
            spent = request.finished - request.started
            self._mean_seconds = spent if not self._mean_seconds else 0.8 * self._mean_seconds + 0.2 * spent
        if reason == "error":
            request.events.put(("error", message or "generation failed"))
        else:
            self.served += 1
            request.events.put(("end", reason, request.completion_tokens))
