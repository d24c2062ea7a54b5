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

from ..errors import ApiError
from ..events import (
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


def usage_dict(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    details = (usage.raw or {}).get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        out["completion_tokens_details"] = {"reasoning_tokens": details["reasoning_tokens"]}
    return out


THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"


def url_citations(annotations: list[Annotation], text: str) -> list[dict[str, Any]]:
    """OpenAI ``url_citation`` annotations; source *n* spans the first ``[[n]]`` in ``text``
    (Qwen's citation mark, §4.5), or 0..0 when the answer never cites it."""
    out = []
    for n, a in enumerate(annotations, 1):
        mark = f"[[{n}]]"
        start = text.find(mark)
        end = start + len(mark) if start >= 0 else 0
        out.append(
            {
                "type": "url_citation",
                "url_citation": {"url": a.url, "title": a.title, "start_index": max(start, 0), "end_index": end},
            }
        )
    return out


def joined(parts: list[str]) -> str:
    """The text of ``parts``, joined once and kept joined: appending to a list and joining
    when read is linear, where ``str +=`` on an attribute copies the whole text every time
    (a long answer in many small deltas took seconds and held the gevent hub meanwhile)."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


@dataclass
class Collected:
    """Everything a finished (or interrupted) answer produced."""

    started: ResponseStarted | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    annotations: list[Annotation] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    _text: list[str] = field(default_factory=list, repr=False)
    _reasoning: list[str] = field(default_factory=list, repr=False)
    _calls: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)
    _arguments: dict[int, list[str]] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return joined(self._text)

    @property
    def reasoning(self) -> str:
        return joined(self._reasoning)

    @property
    def tool_calls(self) -> dict[int, dict[str, Any]]:
        """OpenAI tool calls by index, their ``arguments`` joined."""
        for index, call in self._calls.items():
            call["function"]["arguments"] = joined(self._arguments[index])
        return self._calls

    def add(self, event: Event) -> None:
        if isinstance(event, ResponseStarted):
            self.started = event
        elif isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.finish_reason = event.reason
        elif isinstance(event, ToolCallDelta):
            call = self._calls.setdefault(
                event.index,
                {"id": event.id, "type": "function", "function": {"name": event.name or "", "arguments": ""}},
            )
            if event.id:
                call["id"] = event.id
            if event.name:
                call["function"]["name"] = event.name
            self._arguments.setdefault(event.index, []).append(event.arguments)
        elif isinstance(event, Annotation):
            self.annotations.append(event)
        elif isinstance(event, ImageResult):
            self.images.append(event.url)

    def message(self, *, reasoning_in_content: bool = False) -> dict[str, Any]:
        """The assistant message; ``reasoning_in_content`` wraps the reasoning in
        ``<think>…</think>`` at the start of ``content`` instead of ``reasoning_content``."""
        text = self.text
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if self.reasoning and reasoning_in_content:
            text = message["content"] = THINK_OPEN + self.reasoning + THINK_CLOSE + text
        elif self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not text:
                message["content"] = None
        if self.annotations:
            message["annotations"] = url_citations(self.annotations, text)
        return message


def collect(events: Iterable[Event]) -> Collected:
    collected = Collected()
    for event in events:
        collected.add(event)
    return collected


def completion_response(
    collected: Collected,
    *,
    id: str,
    model: str,
    created: int | None = None,
    extras: dict[str, Any] | None = None,
    reasoning_in_content: bool = False,
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
                "message": collected.message(reasoning_in_content=reasoning_in_content),
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
    """Renders a stream's events as ``chat.completion.chunk`` objects.

    Reasoning goes out as ``delta.reasoning_content`` (or, with ``reasoning_in_content``,
    as ``content`` between ``<think>`` and ``</think>``). Search sources are not part of
    OpenAI's stream delta, so they are gathered and sent once, as ``delta.annotations``
    of the final chunk (the one with ``finish_reason``).
    """

    def __init__(
        self,
        *,
        id: str,
        model: str,
        created: int | None = None,
        include_usage: bool = False,
        extras: dict[str, Any] | None = None,
        reasoning_in_content: bool = False,
    ) -> None:
        self.reasoning_in_content = reasoning_in_content
        self._thinking = False  # inside an open <think> of reasoning_in_content
        self._annotations: list[Annotation] = []
        self._text: list[str] = []  # content sent so far: where the citation marks are
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

    def _content(self, text: str) -> dict[str, Any]:
        if self._thinking:
            self._thinking = False
            text = THINK_CLOSE + text
        self._text.append(text)
        return self.chunk({"content": text})

    def render(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [self._content(event.text)] if event.text else []
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return []
            if not self.reasoning_in_content:
                return [self.chunk({"reasoning_content": event.text})]
            text = event.text if self._thinking else THINK_OPEN + event.text
            self._thinking = True
            self._text.append(text)
            return [self.chunk({"content": text})]
        if self._thinking and isinstance(event, (ToolCallDelta, Finished)):
            return [self._content(""), *self.render(event)]
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
            if event.index not in self._tool_seen:
                self._tool_seen.add(event.index)
                call.update(id=event.id, type="function")
                call["function"]["name"] = event.name or ""
            return [self.chunk({"tool_calls": [call]})]
        if isinstance(event, Annotation):
            self._annotations.append(event)
            return []
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
        out = [self._content("")] if self._thinking else []
        delta: dict[str, Any] = {}
        if self._annotations:
            delta["annotations"] = url_citations(self._annotations, joined(self._text))
        out.append(self.chunk(delta, finish_reason=reason))
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
