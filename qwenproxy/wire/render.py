"""What the stream loop needs from a client API: a renderer of SSE frames and a JSON body.

Each client API (OpenAI chat completions, Anthropic Messages, OpenAI Responses) renders the
same internal events; the loop in ``serving/streaming.py`` only moves frames. Flask-free.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import ApiError
from ..events import Event, TextDelta
from .openai import DONE, PING, ChunkRenderer, Collected, sse


class Renderer(Protocol):
    """SSE frames (complete ``event:``/``data:`` strings) of one streamed answer."""

    keepalive: str  # sent while the upstream is silent

    def start(self) -> list[str]:
        """Before the first event (OpenAI: the role chunk; Anthropic: ``message_start``)."""

    def render(self, event: Event) -> list[str]: ...

    def finish(self, reason: str) -> list[str]:
        """The normal end; a no-op when a ``Finished`` event already ended it."""

    def error(self, err: ApiError) -> list[str]:
        """An upstream failure after the stream began."""

    def close(self) -> list[str]:
        """The very last frames (OpenAI: ``[DONE]``), after ``finish`` or ``error``."""


class Answer(Protocol):
    """How one client API answers a turn: a JSON body, or a stream renderer."""

    def body(self, collected: Collected, fields: dict[str, Any]) -> dict[str, Any]: ...

    def renderer(self, collected: Collected, fields: dict[str, Any]) -> Renderer: ...


class OpenAIChunks:
    """OpenAI's ``chat.completion.chunk`` stream: ``data:`` lines, ``: ping``, ``[DONE]``."""

    keepalive = PING

    def __init__(self, chunks: ChunkRenderer) -> None:
        self.chunks = chunks

    def start(self) -> list[str]:
        return [sse(self.chunks.role())]

    def render(self, event: Event) -> list[str]:
        if type(event) is TextDelta:
            return [self.chunks.content_frame(event.text)] if event.text else []
        return [sse(c) for c in self.chunks.render(event)]

    def finish(self, reason: str) -> list[str]:
        return [sse(c) for c in self.chunks.finish(reason)]

    def error(self, err: ApiError) -> list[str]:
        return [sse(self.chunks.error(err))]

    def close(self) -> list[str]:
        return [DONE]


class Replaying(Protocol):
    """A renderer that also builds the final object from a collected answer."""

    def replay(self, collected: Collected) -> dict[str, Any]: ...


class ReplayAnswer:
    """The answer of an API whose renderer builds both the stream and, by replaying the
    collected answer through itself, the JSON body (Anthropic, Responses): both agree."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def body(self, collected: Collected, fields: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002 - Answer's
        return self._renderer.replay(collected)

    def renderer(self, collected: Collected, fields: dict[str, Any]) -> Renderer:  # noqa: ARG002 - Answer's
        return self._renderer
