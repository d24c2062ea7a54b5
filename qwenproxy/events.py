"""The internal event type every provider yields; ``openai_wire`` renders it for clients."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class ResponseStarted:
    """Upstream ids of the answer: conversation, the user message, the assistant message."""

    chat_id: str | None = None
    parent_id: str | None = None
    response_id: str | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call; ``arguments`` is the new fragment of the JSON string."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Annotation:
    """A source cited by a search answer."""

    url: str
    title: str = ""


@dataclass(frozen=True)
class ImageResult:
    url: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    raw: dict[str, Any] | None = None


@dataclass(frozen=True)
class Finished:
    reason: str = "stop"


def add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    """The usage of two answers of one request added up (the later one's raw figures kept)."""
    if a is None or b is None:
        return a or b
    return Usage(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
        a.total_tokens + b.total_tokens,
        b.raw,
    )


Event = Union[ResponseStarted, TextDelta, ReasoningDelta, ToolCallDelta, Annotation, ImageResult, Usage, Finished]


@dataclass
class EventStream:
    """An iterator of events plus a thread-safe ``cancel`` that aborts the upstream read.

    The stream is consumed by one thread at a time; ``cancel`` may be called from another
    (the client went away) and must make the blocked read return promptly.
    """

    events: Iterator[Event]
    on_cancel: Callable[[], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # e.g. which transport/account served

    def __iter__(self) -> Iterator[Event]:
        return self.events

    def __next__(self) -> Event:
        return next(self.events)

    def cancel(self) -> None:
        if self.on_cancel is not None:
            try:
                self.on_cancel()
            except Exception:  # cancelling must never raise into the caller
                pass

    def close(self) -> None:
        close = getattr(self.events, "close", None)
        if close is not None:
            close()


class EventFilter:
    """An event iterator made by a generator over another stream (tool calls, structured
    output); ``close`` ends the generator, and so the upstream read it holds."""

    _iter: Generator[Event, None, None]

    def __iter__(self) -> Iterator[Event]:
        return self._iter

    def __next__(self) -> Event:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()


@dataclass(frozen=True)
class TaskState:
    """Where an upstream media task stands, in OpenAI's video statuses: ``queued``,
    ``in_progress``, ``completed`` (``url`` set) or ``failed`` (``error`` set)."""

    status: str
    progress: int = 0
    url: str | None = None
    error: str | None = None
    raw: str = ""  # the upstream's own status word

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")
