"""How a Qwen web turn copes with the 2026 site (2026 spec §1, §3).

- Thinking that cannot be turned off (``think_skip.enable`` false) is always sent as on;
  the reasoning reaches the client only when it asked for thinking (or a setting says so).
- A generation the client abandoned is stopped (``completions/stop``), best effort, in the
  background, bounded: otherwise the chat answers the next turn "The chat is in progress!".
- That answer is met with stop + a short backoff; when it persists the provider moves the turn
  to a new chat whose first message folds the conversation (``wire/transcript.py``), no 409.

Flask-free; the provider (``qwen_web.py``) wires these around its calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import ApiError, BadRequest, Conflict
from ..events import Event, Finished, ReasoningDelta, ResponseStarted
from ..qwen.catalog import ModelCatalog
from ..qwen.client import QwenClient
from ..qwen.transport import UpstreamResponse

log = logging.getLogger(__name__)

IN_PROGRESS = "chat_in_progress"


# --------------------------------------------------------------------------- thinking (2026 §1)


def forced_thinking(
    catalog: ModelCatalog, model: str, options: Mapping[str, Any], features: Mapping[str, Any], show: bool = False
) -> tuple[dict[str, Any], bool]:
    """``(feature_config to send, whether to drop the reasoning)`` for ``model``.

    A locked model gets ``thinking_enabled: true`` whatever was asked (the site refuses
    ``false`` with ``invalid_input``); its reasoning is dropped unless the client asked for
    thinking (``reasoning_effort``, ``enable_thinking``, ``-thinking``) or ``show`` is set.
    """
    out = dict(features)
    if not catalog.thinking_locked(model):
        return out, False
    out["thinking_enabled"] = True
    out.pop("thinking_mode", None)  # follows thinking_enabled (protocol.completion_body)
    return out, not (options.get("thinking") is True or show)


def without_reasoning(events: Iterator[Event]) -> Iterator[Event]:
    for event in events:
        if not isinstance(event, ReasoningDelta):
            yield event


# --------------------------------------------------------------------------- stop (2026 §3)


class StopGuard:
    """Stops the upstream generation when its stream is left before ``finished``: the client
    went away (the cancel hook) or the reader stopped early (the relay closed).

    ``observe`` sees every event; ``abandon`` (from the cancel hook or the relay's
    ``finally``, any thread, any number of times) fires one stop call in a background
    thread (a greenlet under gevent), so the client's request never waits for it. ``done``
    (finished, a wall, a broken upstream) means there is nothing to stop.
    """

    def __init__(
        self, client: QwenClient, token: str | None, account_id: str | None, chat_id: str, timeout: float = 2.0
    ) -> None:
        self.client = client
        self.token = token
        self.account_id = account_id
        self.chat_id = chat_id
        self.timeout = timeout
        self.response_id: str | None = None
        self.done = False  # finished, or nothing left to stop (a wall)
        self._fired = False
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def observe(self, event: Event) -> None:
        if isinstance(event, ResponseStarted) and self.response_id is None:
            self.response_id = event.response_id
        elif isinstance(event, Finished):
            self.done = True

    def abandon(self) -> None:
        with self._lock:
            if self._fired or self.done or not self.response_id:
                return
            self._fired = True
        self.thread = threading.Thread(target=self._stop, daemon=True, name="qwen-stop")
        self.thread.start()

    def _stop(self) -> None:
        assert self.response_id is not None
        try:
            self.client.stop(
                self.token, self.chat_id, self.response_id, account_id=self.account_id, timeout=self.timeout
            )
            log.info("stopped the abandoned generation %s of chat %s", self.response_id, self.chat_id)
        except Exception as exc:  # best effort: the next turn copes with "in progress"
            log.info("could not stop generation %s: %s", self.response_id, exc)


# --------------------------------------------------------------------------- "in progress" (2026 §3)


_live_lock = threading.Lock()
_live: dict[str, int] = {}  # upstream chat id -> answers this process is relaying from it


@contextmanager
def relaying(chat_id: str) -> Iterator[None]:
    """Mark ``chat_id`` as answering for this process while its stream is relayed."""
    with _live_lock:
        _live[chat_id] = _live.get(chat_id, 0) + 1
    try:
        yield
    finally:
        with _live_lock:
            left = _live.get(chat_id, 1) - 1
            if left > 0:
                _live[chat_id] = left
            else:
                _live.pop(chat_id, None)


def relayed_here(chat_id: str) -> bool:
    """Whether a request of this process is reading an answer from ``chat_id`` right now."""
    with _live_lock:
        return chat_id in _live


def is_in_progress(exc: BaseException) -> bool:
    return isinstance(exc, Conflict) and exc.code == IN_PROGRESS


def parse_backoff(text: Any) -> list[float]:
    """``"0.5,1,2"`` → ``[0.5, 1.0, 2.0]`` (bad items skipped)."""
    out = []
    for item in str(text or "").split(","):
        try:
            out.append(max(0.0, float(item)))
        except ValueError:
            continue
    return out


def open_completion(
    client: QwenClient,
    token: str,
    body: Mapping[str, Any],
    *,
    account_id: str | None,
    model: str,
    backoff: list[float],
    stop_timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Iterator[Event], UpstreamResponse]:
    """``client.open_completion``; "The chat is in progress!" is stopped and retried after
    each ``backoff`` delay, and raised (``Conflict``) when it persists, or at once when another
    request of this process is reading that answer: the provider then moves the turn to a new
    chat with the history folded. ``invalid_input`` names the model."""
    chat_id = str(body["chat_id"])
    try:
        try:
            return client.open_completion(token, body, account_id=account_id)
        except ApiError as exc:
            # a live answer of another request here is never stopped: the turn moves instead
            if not is_in_progress(exc) or not backoff or relayed_here(chat_id):
                raise
        log.info("chat %s is in progress; stopping it and retrying", chat_id)
        _stop_current(client, token, chat_id, account_id, stop_timeout)
        for i, delay in enumerate(backoff):
            sleep(delay)
            try:
                return client.open_completion(token, body, account_id=account_id)
            except ApiError as exc:
                if not is_in_progress(exc) or i == len(backoff) - 1:
                    raise
        raise AssertionError("unreachable")
    except BadRequest as exc:
        if exc.code != "upstream_invalid_input":
            raise
        raise BadRequest(f"{exc.message} (model {model})", code=exc.code, param="model") from exc


def _stop_current(client: QwenClient, token: str, chat_id: str, account_id: str | None, timeout: float) -> None:
    """Stop whatever the chat is generating (its newest message), best effort."""
    try:
        current = client.current_response_id(token, chat_id, account_id=account_id, timeout=timeout)
        if current:
            client.stop(token, chat_id, current, account_id=account_id, timeout=timeout)
    except Exception as exc:  # the retries still follow
        log.info("could not stop chat %s: %s", chat_id, exc)
