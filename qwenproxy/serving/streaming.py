"""The one stream loop: every provider's answer reaches the client through ``serve``.

It pulls the first event before anything is sent, so an early failure is a normal JSON
error with a real status; afterwards errors go in-band, followed by ``[DONE]``. While the
upstream is silent it sends ``: ping`` comments (WSGI only learns that a client left when a
write fails); when the client leaves, the upstream request is cancelled and what was
produced is saved. Both answers, JSON and SSE, end in the same ``_Run.finish`` step.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from flask import Response, current_app, g, jsonify, request, stream_with_context

from .. import db
from ..errors import ApiError, UpstreamError
from ..events import Event, EventStream, Finished, ResponseStarted
from ..ops import requestlog
from ..ops.metrics import TurnStats
from ..wire.openai import ChunkRenderer, Collected, completion_id
from ..wire.render import Answer, OpenAIChunks, Renderer
from .conversations import Turn
from .live import LiveTurns, off_hub, spawn, yield_to_hub

log = logging.getLogger(__name__)

BIG_ANSWER = 256 * 1024  # characters: saving more than this could hold the hub for milliseconds

Extras = Callable[[Collected, dict[str, Any]], dict[str, Any]]
Shape = Callable[[Collected, dict[str, Any]], dict[str, Any]]


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    log.error("provider failed: %r", exc, exc_info=exc)
    return UpstreamError("The upstream failed while answering")


def _usage(turn: Turn) -> tuple[int | None, int | None]:
    usage = turn.collected.usage
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None)


def _log_fields(stats: TurnStats, turn: Turn, error: ApiError | None = None) -> dict[str, Any]:
    """What the request log keeps of a completion (no content)."""
    prompt, completion = _usage(turn)
    return {
        "model": stats.model,
        "provider": stats.provider,
        "ttft_ms": round(stats.ttft_ms, 2) if stats.ttft_ms is not None else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "error_code": error.code or error.type if error else None,
        "error_message": error.message if error else None,
    }


def _pump(stream: EventStream, out: queue.Queue[tuple[str, Any]]) -> None:
    try:
        for event in stream:
            out.put(("event", event))
            yield_to_hub()  # a fast upstream must not hold the hub (serving/live.py)
        out.put(("end", None))
    except Exception as exc:  # handed to the consumer, which reports it in-band
        out.put(("error", exc))
    except BaseException:  # GreenletExit, SystemExit: the worker is stopping; let it
        out.put(("error", UpstreamError("The upstream read was interrupted")))
        raise


class _Run:
    """One completion between its first event and its end: what both answers share."""

    def __init__(self, stream_factory: Callable[[], EventStream], turn: Turn, model: str) -> None:
        self.turn = turn
        self.stats = TurnStats(current_app.extensions.get("metrics"), turn.provider, model)
        self.first: list[Event] = []
        self.ended = False
        self.events: EventStream | None = None
        self.shutdown: ApiError | None = None  # set when shutdown ended this turn (live.py)
        self._pending: queue.Queue[tuple[str, Any]] | None = None
        self._live: LiveTurns | None = current_app.extensions.get("live_turns")
        self._token = self._live.add(self._end) if self._live is not None else None
        try:
            if self.shutdown is not None:  # a request that came after shutdown began
                raise self.shutdown
            self.events = stream_factory()
            turn.info = self.events.info
            self._prime()
        except Exception as exc:
            err = self.shutdown or as_api_error(exc)
            g.request_log = self.finish("error", error=err, note=str(exc))
            raise err from exc
        except BaseException:  # GreenletExit, SystemExit: no 502 for them, they go on
            self.finish("error", note="interrupted")
            raise

    def _end(self, error: ApiError) -> None:
        """Shutdown (``LiveTurns.end_all``): report ``error`` and stop the upstream call."""
        self.shutdown = error
        if self._pending is not None:
            self._pending.put(("shutdown", error))  # wakes the SSE loop, ahead of the cut below
        if self.events is not None:
            self.events.cancel()

    def _prime(self) -> None:
        """Pull the first event (errors raise); note whether it already ended the answer."""
        try:
            event = next(self.events)
        except StopIteration:
            self.ended = True
            return
        finally:
            self.stats.upstream_answered()
        self.observe(event)
        self.first.append(event)
        self.ended = isinstance(event, Finished)

    def observe(self, event: Event) -> None:
        self.turn.observe(event)
        self.stats.observe(event)

    def finish(
        self,
        status: str,
        *,
        error: ApiError | None = None,
        stage: str = "early",
        note: str | None = None,
        record: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """The end of every turn, however it ended: count it, save the answer, and return
        what the request log keeps. ``record`` writes that row at once, in the same
        database connection as the answer (a stream ends after its request did)."""
        if self._live is not None and self._token is not None:
            self._live.remove(self._token)
        if error is not None:
            self.stats.error(error.code, stage)
        self.stats.finish(status, *_usage(self.turn))
        fields = _log_fields(self.stats, self.turn, error)
        also = (lambda: record(fields)) if record is not None else None
        # one transaction (answer, usage, log row); never raises; a big answer off the hub
        self.save(lambda: self.turn.close(status, error=note, also=also))
        return fields

    def save(self, save: Callable[[], None]) -> None:
        """A big answer is written from a native thread: the worker's other requests go on."""
        collected = self.turn.collected
        if len(collected.text) + len(collected.reasoning) > BIG_ANSWER:
            off_hub(save)
        else:
            save()

    def collect(self, record: Callable[[dict[str, Any]], None] | None = None) -> None:
        """The JSON path: read the rest of the answer; a failure is still an HTTP error.
        ``record`` writes the request-log row of a success with the answer."""
        assert self.events is not None
        outcome = lambda: "partial" if self.turn.collected.text else "error"  # noqa: E731
        try:
            if not self.ended:
                for event in self.events:
                    self.observe(event)
                    yield_to_hub()
        except Exception as exc:
            err = self.shutdown or as_api_error(exc)
            g.request_log = self.finish(outcome(), error=err, note=str(exc))
            raise err from exc
        except BaseException:  # the worker is being stopped: save what there is, let it go on
            self.events.cancel()
            self.finish(outcome(), note="interrupted")
            raise
        g.request_log = self.finish("complete", record=record)
        g.request_log_deferred = record is not None

    def relay(self, renderer: Renderer, ping_interval: float) -> Generator[str, None, str]:
        """The SSE path: chunks as events arrive, pings while the upstream is silent.

        Chunks that are ready together go out in one write (nothing waits for more); what
        is ready at the end is returned, for the caller to send with the last chunks."""
        ready = list(renderer.start())
        for event in self.first:
            ready.extend(renderer.render(event))
        if self.ended:
            return "".join(ready)
        yield "".join(ready)
        pending: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending = pending
        spawn(_pump, self.events, pending)  # in this request's context: log lines keep its id
        while True:
            if self.shutdown is not None:
                raise _InBand(self.shutdown)
            try:
                kind, value = pending.get(timeout=ping_interval)
            except queue.Empty:
                yield renderer.keepalive
                continue
            ready = []
            while kind == "event":
                self.observe(value)
                ready.extend(renderer.render(value))
                try:
                    kind, value = pending.get_nowait()
                except queue.Empty:
                    kind = ""
            if kind == "end":
                return "".join(ready)
            if kind in ("error", "shutdown"):
                raise _InBand(self.shutdown or as_api_error(value), "".join(ready))
            yield "".join(ready)
            yield_to_hub()  # between two writes, the other requests of this worker run


class _InBand(Exception):
    """An upstream failure after the first chunk: reported in the stream, not as a status."""

    def __init__(self, error: ApiError, ready: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.ready = ready  # chunks rendered before the failure, not sent yet


def serve(
    stream_factory: Callable[[], EventStream],
    turn: Turn,
    *,
    stream: bool,
    model: str,
    extras: Extras,
    include_usage: bool = False,
    ping_interval: float = 15.0,
    shape: Shape | None = None,
    reasoning_in_content: bool = False,
    answer: Answer | None = None,
) -> Response:
    """Run one completion and answer it as JSON or as SSE.

    ``extras(collected, info)`` gives the fields added to every body/chunk (``chatId``,
    ``parentId``); ``shape`` builds the non-stream body from the collected answer. Another
    client API (Anthropic, Responses) gives its ``answer`` instead: its body and renderer.
    """
    run = _Run(stream_factory, turn, model)
    headers = _headers(turn, extras)
    if not stream:
        shape = answer.body if answer is not None else shape
        assert shape is not None
        return _json_answer(run, headers, shape, extras)
    if answer is not None:
        own = answer.renderer(turn.collected, extras(turn.collected, turn.info))
        return _sse_answer(run, headers, own, ping_interval)
    started = turn.collected.started
    renderer = ChunkRenderer(
        id=completion_id(started.response_id if isinstance(started, ResponseStarted) else None),
        model=model,
        include_usage=include_usage,
        extras=extras(turn.collected, turn.info),
        reasoning_in_content=reasoning_in_content,
    )
    return _sse_answer(run, headers, OpenAIChunks(renderer), ping_interval)


def _json_answer(run: _Run, headers: dict[str, str], shape: Shape, extras: Extras) -> Response:
    keep = int(current_app.config.get("REQUEST_LOG_KEEP") or 1000)
    base = {"request_id": g.get("request_id"), "method": request.method, "route": _route(), "status": 200}

    def record(fields: dict[str, Any]) -> None:
        duration = round((time.perf_counter() - g.get("started", run.stats.started)) * 1000, 2)
        requestlog.record(keep, **base, **fields, duration_ms=duration)

    run.collect(record)
    collected = run.turn.collected
    response = jsonify(shape(collected, extras(collected, run.turn.info)))
    response.headers.update(headers)
    return response


def _sse_answer(run: _Run, headers: dict[str, str], renderer: Renderer, ping_interval: float) -> Response:
    turn = run.turn
    metrics = current_app.extensions.get("metrics")
    log_keep = int(current_app.config.get("REQUEST_LOG_KEEP") or 1000)
    log_base = {"request_id": g.get("request_id"), "method": request.method, "route": _route()}
    g.request_log_deferred = True

    def body() -> Iterator[str]:
        status = "partial"
        failed: ApiError | None = None
        saved = False

        def record(fields: dict[str, Any]) -> None:
            row = {**log_base, **fields, "status": 200}
            row["duration_ms"] = round((time.perf_counter() - run.stats.started) * 1000, 2)
            if status == "partial" and failed is None:
                row["error_code"] = "client_disconnected"
            requestlog.record(log_keep, **row)

        if metrics:
            metrics.streams.inc()
        try:
            try:
                tail = yield from run.relay(renderer, ping_interval)
            except _InBand as exc:
                failed = exc.error
                tail = exc.ready + "".join(renderer.error(failed))
            if failed is None:
                tail += "".join(renderer.finish(turn.collected.finish_reason or "stop"))
                status = "complete"
                # saved (answer, usage, log row: one transaction) before the end: a client may
                # send its next turn the moment it reads it, and that request must find this
                # answer (serving/history.py's point)
                run.finish(status, stage="in_stream", record=record)
                saved = True
            yield tail + "".join(renderer.close())  # the last chunks and the end: one write
        finally:
            if metrics:
                metrics.streams.dec()
            if not saved:
                if status != "complete":
                    run.events.cancel()
                if failed is not None:
                    status = "partial" if turn.collected.text else "error"
                run.finish(
                    status,
                    error=failed,
                    stage="in_stream",
                    note=failed.message if failed else None,
                    record=record,
                )

    response = Response(stream_with_context(body()), mimetype="text/event-stream")
    response.headers.update(headers)
    response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response.headers["X-Accel-Buffering"] = "no"
    # a stream may stay open for minutes: it must not hold a database connection (memory, file
    # descriptors) meanwhile; the turn opens one again to save the answer (a shared SQLite
    # connection serves the whole worker and stays)
    if not db.database.is_closed() and not db.shared_connection():
        db.database.close()
    return response


def _route() -> str:
    return request.url_rule.rule if request.url_rule is not None else request.path


def _headers(turn: Turn, extras: Extras) -> dict[str, str]:
    fields = extras(turn.collected, turn.info)
    headers = {}
    if fields.get("chatId"):
        headers["X-Chat-Id"] = str(fields["chatId"])
    if fields.get("parentId"):
        headers["X-Parent-Id"] = str(fields["parentId"])
    if turn.info.get("transport"):
        headers["X-Upstream-Transport"] = str(turn.info["transport"])
    # a provider's own response headers (e.g. X-Model-Switched)
    for name, value in (turn.info.get("headers") or {}).items():
        headers[str(name)] = str(value)
    return headers
