"""The turns this process is answering now, and how they share the process fairly.

At shutdown (SIGTERM) running streams may finish for ``GRACEFUL_TIMEOUT`` seconds; then
gunicorn's master SIGKILLs the worker, and a stream cut that way gets no in-band error, no
``[DONE]`` and loses its partial answer. So shortly before that deadline the process ends
every turn still running itself (``end_before``): a stream sends ``server_shutdown`` in-band
and ``[DONE]``, a JSON answer becomes a 503 ``server_shutdown``; both save what they have and
cancel their upstream request.

Under gevent every request shares one thread; a loop that never blocks (a fast upstream, a
client that reads as fast) would starve every other request and gunicorn's heartbeat:
``yield_to_hub`` lets the others run between two chunks. Flask-free.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..db.connection import gevent_patched
from ..errors import ApiError, ServerShutdown

log = logging.getLogger(__name__)

Ender = Callable[[ApiError], None]
T = TypeVar("T")


class LiveTurns:
    """Every running turn's ``end(error)``: makes it stop, report ``error`` and save."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: dict[int, Ender] = {}
        self._ids = itertools.count()
        self.ended: ApiError | None = None  # set once shutdown ended the turns

    def add(self, end: Ender) -> int:
        """Register a turn; one that starts after shutdown began is ended at once."""
        with self._lock:
            token = next(self._ids)
            self._ends[token] = end
            ended = self.ended
        if ended is not None:
            end(ended)
        return token

    def remove(self, token: int) -> None:
        with self._lock:
            self._ends.pop(token, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ends)

    def end_all(self, error: ApiError) -> int:
        """End every running turn with ``error``; returns how many there were."""
        with self._lock:
            self.ended = error
            ends = list(self._ends.values())
        for end in ends:
            try:
                end(error)
            except Exception:  # one turn must not keep the others running
                log.exception("could not end a running turn")
        return len(ends)


def margin(graceful: float) -> float:
    """Seconds before the graceful deadline at which running turns are ended: time to send
    the error, save the partial answers and let the worker exit before the SIGKILL."""
    return min(5.0, max(1.0, graceful * 0.2))


def end_before(turns: LiveTurns, graceful: float, started: float | None = None) -> threading.Timer:
    """Schedule ``end_all(server_shutdown)`` ``margin`` seconds before ``started + graceful``
    (``started``: when the SIGTERM came, ``time.monotonic()``)."""
    started = time.monotonic() if started is None else started
    delay = max(0.0, started + graceful - margin(graceful) - time.monotonic())

    def _end() -> None:
        count = turns.end_all(
            ServerShutdown("The server is shutting down; this answer was ended before the shutdown deadline")
        )
        if count:
            log.warning("shutdown: ended %d running answer(s) %.1f s before the deadline", count, margin(graceful))

    timer = threading.Timer(delay, _end)
    timer.daemon = True
    timer.start()
    return timer


def off_hub(fn: Callable[[], T]) -> T:
    """``fn()`` in one of gevent's native threads when gevent runs this process, so that a
    long blocking call (SQLite writing a 50 MB answer: sqlite3 releases the GIL) does not
    hold every other request of the worker; a plain call otherwise."""
    if not gevent_patched():
        return fn()
    from gevent import get_hub

    return get_hub().threadpool.apply(fn)


try:  # monkey-patching makes ``threading.get_ident`` a greenlet's: keep the OS thread's
    from gevent.monkey import get_original

    _native_thread_id: Callable[[], int] = get_original("_thread", "get_ident")
except ImportError:  # pragma: no cover - gevent is a dependency
    _native_thread_id = threading.get_ident

_HUB_THREAD = _native_thread_id()  # imported by the thread that serves requests

YIELD_EVERY = 0.002  # seconds a greenlet may run between two yields
_last_yield = [0.0]


def yield_to_hub() -> None:
    """Let other requests run when this one has run for ``YIELD_EVERY`` since the last yield
    (gevent: ``sleep(0)``). Called per event and per write: a switch each time cost more
    than rendering a chunk, so the others get the hub at least every couple of milliseconds.

    ``time.sleep`` is gevent's under gunicorn and ``python app.py`` (monkey-patched); in a
    plain thread it only releases the GIL. In one of ``off_hub``'s native threads it does
    nothing (there the GIL's own switching lets the hub run)."""
    now = time.perf_counter()
    if now - _last_yield[0] < YIELD_EVERY or _native_thread_id() != _HUB_THREAD:
        return
    time.sleep(0)
    _last_yield[0] = time.perf_counter()


def spawn(fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)`` beside the caller, in the caller's context (its log lines keep the
    request id): a greenlet under gevent (a patched ``Thread`` also waits for an event to
    start), a daemon thread otherwise."""
    context = contextvars.copy_context()
    if gevent_patched():
        import gevent

        gevent.spawn(context.run, fn, *args)
    else:
        threading.Thread(target=context.run, args=(fn, *args), daemon=True, name=getattr(fn, "__name__", "")).start()
