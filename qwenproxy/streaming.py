"""The one stream loop: every provider's answer reaches the client through ``serve``.

It pulls the first event before anything is sent, so an early failure is a normal JSON
error with a real status; afterwards errors go in-band, followed by ``[DONE]``. While the
upstream is silent it sends ``: ping`` comments (WSGI only learns that a client left when a
write fails); when the client leaves, the upstream request is cancelled and what was
produced is saved.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, jsonify, stream_with_context

from .conversations import Turn
from .errors import ApiError, UpstreamError
from .events import Event, EventStream, Finished, ResponseStarted
from .openai_wire import DONE, PING, ChunkRenderer, Collected, sse

log = logging.getLogger(__name__)

Extras = Callable[[Collected, dict[str, Any]], dict[str, Any]]


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    log.error("provider failed: %r", exc, exc_info=exc)
    return UpstreamError("The upstream failed while answering")


def _prime(stream: EventStream, turn: Turn) -> tuple[list[Event], bool]:
    """Events up to and including the first one (errors raise); ``True`` if it already ended."""
    first: list[Event] = []
    try:
        event = next(stream)
    except StopIteration:
        return first, True
    turn.observe(event)
    first.append(event)
    return first, isinstance(event, Finished)


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
    try:
        events = stream_factory()
        turn.info = events.info
        first, ended = _prime(events, turn)
    except BaseException as exc:
        turn.close("error", error=str(exc))
        raise as_api_error(exc) from exc

    started = turn.collected.started
    response_id = started.response_id if isinstance(started, ResponseStarted) else None
    headers = _headers(turn, extras)

    if not stream:
        try:
            if not ended:
                for event in events:
                    turn.observe(event)
        except BaseException as exc:
            turn.close("partial" if turn.collected.text else "error", error=str(exc))
            raise as_api_error(exc) from exc
        turn.close("complete")
        assert shape is not None
        body = shape(turn.collected, extras(turn.collected, turn.info))
        response = jsonify(body)
        response.headers.update(headers)
        return response

    from .openai_wire import completion_id

    renderer = ChunkRenderer(
        id=completion_id(response_id),
        model=model,
        include_usage=include_usage,
        extras=extras(turn.collected, turn.info),
        reasoning_in_content=reasoning_in_content,
    )

    def relay() -> Iterator[str]:
        status = "partial"
        failed: ApiError | None = None
        try:
            yield sse(renderer.role())
            for event in first:
                for chunk in renderer.render(event):
                    yield sse(chunk)
            if not ended:
                pending: queue.Queue[tuple[str, Any]] = queue.Queue()
                threading.Thread(target=_pump, args=(events, pending), daemon=True, name="upstream").start()
                while True:
                    try:
                        kind, value = pending.get(timeout=ping_interval)
                    except queue.Empty:
                        yield PING
                        continue
                    if kind == "event":
                        turn.observe(value)
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
            yield DONE
        finally:
            if status != "complete":
                events.cancel()
            if failed is not None:
                status = "partial" if turn.collected.text else "error"
            turn.close(status, error=failed.message if failed else None)

    response = Response(stream_with_context(relay()), mimetype="text/event-stream")
    response.headers.update(headers)
    response.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
    response.headers["X-Accel-Buffering"] = "no"
    return response


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
