"""The one place that turns internal events into OpenAI chat JSON and SSE chunks.

Every provider's events go through here, streamed or not, so all three upstreams look the
same to a client.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .events import (
    Annotation,
    Event,
    Finished,
    ImageResult,
    ReasoningDelta,
    ResponseStarted,
    TextDelta,
    ToolCallDelta,
    Usage,
)

DONE = "data: [DONE]\n\n"
PING = ": ping\n\n"


def sse(obj: Any) -> str:
    """One SSE event carrying a JSON object."""
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def completion_id(response_id: str | None = None) -> str:
    return response_id or f"chatcmpl-{uuid.uuid4().hex}"


def usage_dict(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@dataclass
class Collected:
    """Everything a finished (or interrupted) answer produced."""

    started: ResponseStarted | None = None
    text: str = ""
    reasoning: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: list[Annotation] = field(default_factory=list)
    images: list[str] = field(default_factory=list)

    def add(self, event: Event) -> None:
        if isinstance(event, ResponseStarted):
            self.started = event
        elif isinstance(event, TextDelta):
            self.text += event.text
        elif isinstance(event, ReasoningDelta):
            self.reasoning += event.text
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.finish_reason = event.reason
        elif isinstance(event, ToolCallDelta):
            call = self.tool_calls.setdefault(
                event.index,
                {"id": event.id, "type": "function", "function": {"name": event.name or "", "arguments": ""}},
            )
            if event.id:
                call["id"] = event.id
            if event.name:
                call["function"]["name"] = event.name
            call["function"]["arguments"] += event.arguments
        elif isinstance(event, Annotation):
            self.annotations.append(event)
        elif isinstance(event, ImageResult):
            self.images.append(event.url)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not self.text:
                message["content"] = None
        if self.annotations:
            message["annotations"] = [
                {
                    "type": "url_citation",
                    "url_citation": {"url": a.url, "title": a.title, "start_index": 0, "end_index": 0},
                }
                for a in self.annotations
            ]
        return message


def collect(events: Iterable[Event]) -> Collected:
    collected = Collected()
    for event in events:
        collected.add(event)
    return collected


def completion_response(
    collected: Collected, *, id: str, model: str, created: int | None = None, extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": int(created or time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": collected.message(),
                "logprobs": None,
                "finish_reason": collected.finish_reason or "stop",
            }
        ],
        "usage": usage_dict(collected.usage),
    }
    if collected.usage is not None and collected.usage.raw:
        body["upstream_usage"] = collected.usage.raw
    body.update(extras or {})
    return body


class ChunkRenderer:
    """Renders a stream's events as ``chat.completion.chunk`` objects."""

    def __init__(
        self,
        *,
        id: str,
        model: str,
        created: int | None = None,
        include_usage: bool = False,
        extras: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.model = model
        self.created = int(created or time.time())
        self.include_usage = include_usage
        self.extras = dict(extras or {})
        self.usage: Usage | None = None
        self.finished = False
        self._tool_seen: set[int] = set()

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            body["usage"] = None
        body.update(self.extras)
        return body

    def role(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def render(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [self.chunk({"content": event.text})] if event.text else []
        if isinstance(event, ReasoningDelta):
            return [self.chunk({"reasoning_content": event.text})] if event.text else []
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
            if event.index not in self._tool_seen:
                self._tool_seen.add(event.index)
                call.update(id=event.id, type="function")
                call["function"]["name"] = event.name or ""
            return [self.chunk({"tool_calls": [call]})]
        if isinstance(event, Annotation):
            annotation = {
                "type": "url_citation",
                "url_citation": {"url": event.url, "title": event.title, "start_index": 0, "end_index": 0},
            }
            return [self.chunk({"annotations": [annotation]})]
        if isinstance(event, Usage):
            self.usage = event
            return []
        if isinstance(event, Finished):
            return self.finish(event.reason)
        return []

    def finish(self, reason: str = "stop") -> list[dict[str, Any]]:
        if self.finished:
            return []
        self.finished = True
        out = [self.chunk({}, finish_reason=reason)]
        if self.include_usage:
            final = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_dict(self.usage),
            }
            final.update(self.extras)
            out.append(final)
        return out

    @staticmethod
    def error(err: ApiError) -> dict[str, Any]:
        """An in-band error after the stream has begun."""
        return err.to_dict()
