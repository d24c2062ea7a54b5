"""The one stream loop: every provider's answer reaches the client through ``serve``.

It pulls the first event before anything is sent, so an early failure is a normal JSON
error with a real status; afterwards errors go in-band, followed by ``[DONE]``. While the
upstream is silent it sends ``: ping`` comments (WSGI only learns that a client left when a
write fails); when the client leaves, the upstream request is cancelled and what was
produced is saved.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, g, jsonify, request, stream_with_context

from .. import db
from ..errors import ApiError, UpstreamError
from ..events import Event, EventStream, Finished, ResponseStarted
from ..ops import requestlog
from ..ops.metrics import TurnStats
from ..wire.openai import DONE, PING, ChunkRenderer, Collected, sse
from .conversations import Turn

log = logging.getLogger(__name__)

Extras = Callable[[Collected, dict[str, Any]], dict[str, Any]]


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    log.error("provider failed: %r", exc, exc_info=exc)
    return UpstreamError("The upstream failed while answering")


def _prime(stream: EventStream, turn: Turn, stats: TurnStats) -> tuple[list[Event], bool]:
    """Events up to and including the first one (errors raise); ``True`` if it already ended."""
    first: list[Event] = []
    try:
        event = next(stream)
    except StopIteration:
        return first, True
    finally:
        stats.upstream_answered()
    turn.observe(event)
    stats.observe(event)
    first.append(event)
    return first, isinstance(event, Finished)


def _stats(turn: Turn, model: str) -> TurnStats:
    return TurnStats(current_app.extensions.get("metrics"), turn.provider, model)


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
        out.put(("end", None))
    except BaseException as exc:  # handed to the consumer, which reports it in-band
        out.put(("error", exc))


def serve(
    stream_factory: Callable[[], EventStream],
    turn: Turn,
    *,
    stream: bool,
    model: str,
    extras: Extras,
    include_usage: bool = False,
    ping_interval: float = 15.0,
    shape: Callable[[Collected, dict[str, Any]], dict[str, Any]] | None = None,
    reasoning_in_content: bool = False,
) -> Response:
    """Run one completion and answer it as JSON or as SSE.

    ``extras(collected, info)`` gives the fields added to every body/chunk (``chatId``,
    ``parentId``); ``shape`` builds the non-stream body from the collected answer.
    """
    stats = _stats(turn, model)
    try:
        events = stream_factory()
        turn.info = events.info
        first, ended = _prime(events, turn, stats)
    except BaseException as exc:
        turn.close("error", error=str(exc))
        err = as_api_error(exc)
        stats.error(err.code, "early")
        stats.finish("error", None, None)
        g.request_log = _log_fields(stats, turn, err)
        raise err from exc

    started = turn.collected.started
    response_id = started.response_id if isinstance(started, ResponseStarted) else None
    headers = _headers(turn, extras)

    if not stream:
        try:
            if not ended:
                for event in events:
                    turn.observe(event)
                    stats.observe(event)
        except BaseException as exc:
            outcome = "partial" if turn.collected.text else "error"
            turn.close(outcome, error=str(exc))
            err = as_api_error(exc)
            stats.error(err.code, "early")
            stats.finish(outcome, *_usage(turn))
            g.request_log = _log_fields(stats, turn, err)
            raise err from exc
        turn.close("complete")
        stats.finish("complete", *_usage(turn))
        g.request_log = _log_fields(stats, turn)
        assert shape is not None
        body = shape(turn.collected, extras(turn.collected, turn.info))
        response = jsonify(body)
        response.headers.update(headers)
        return response

    from ..wire.openai import completion_id

    renderer = ChunkRenderer(
        id=completion_id(response_id),
        model=model,
        include_usage=include_usage,
        extras=extras(turn.collected, turn.info),
        reasoning_in_content=reasoning_in_content,
    )

    metrics = current_app.extensions.get("metrics")
    log_keep = int(current_app.config.get("REQUEST_LOG_KEEP") or 1000)
    log_base = {"request_id": g.get("request_id"), "method": request.method, "route": _route()}
    g.request_log_deferred = True

    def relay() -> Iterator[str]:
        status = "partial"
        failed: ApiError | None = None
        if metrics:
            metrics.streams.inc()
        try:
            yield sse(renderer.role())
            for event in first:
                for chunk in renderer.render(event):
                    yield sse(chunk)
            if not ended:
                pending: queue.Queue[tuple[str, Any]] = queue.Queue()
                # the pump runs in this request's context, so its log lines carry the request id
                context = contextvars.copy_context()
                threading.Thread(
                    target=context.run, args=(_pump, events, pending), daemon=True, name="upstream"
                ).start()
                while True:
                    try:
                        kind, value = pending.get(timeout=ping_interval)
                    except queue.Empty:
                        yield PING
                        continue
                    if kind == "event":
                        turn.observe(value)
                        stats.observe(value)
                        for chunk in renderer.render(value):
                            yield sse(chunk)
                    elif kind == "end":
                        break
                    else:
                        failed = as_api_error(value)
                        yield sse(renderer.error(failed))
                        break
            if failed is None:
                for chunk in renderer.finish(turn.collected.finish_reason or "stop"):
                    yield sse(chunk)
                status = "complete"
                # saved before [DONE]: a client may send its next turn the moment it reads it,
                # and that request must find this answer (serving/history.py's point)
                turn.close(status)
            yield DONE
        finally:
            if status != "complete":
                events.cancel()
            if failed is not None:
                status = "partial" if turn.collected.text else "error"
            if metrics:
                metrics.streams.dec()
            if failed is not None:
                stats.error(failed.code, "in_stream")
            stats.finish(status, *_usage(turn))
            fields = {**log_base, **_log_fields(stats, turn, failed), "status": 200}
            fields["duration_ms"] = round((time.perf_counter() - stats.started) * 1000, 2)
            if status == "partial" and failed is None:
                fields["error_code"] = "client_disconnected"
            try:
                with db.session():  # one connection for the answer and its log row
                    turn.close(status, error=failed.message if failed else None)
                    requestlog.record(log_keep, **fields)
            except Exception:
                log.exception("could not save the end of a stream")

    response = Response(stream_with_context(relay()), mimetype="text/event-stream")
    response.headers.update(headers)
    response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response.headers["X-Accel-Buffering"] = "no"
    # a stream may stay open for minutes: it must not hold a database connection (memory, file
    # descriptors) meanwhile; the turn opens one again to save the answer
    if not db.database.is_closed():
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
