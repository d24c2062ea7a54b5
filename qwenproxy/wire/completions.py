"""OpenAI's legacy ``text_completion`` answers (``POST /v1/completions``), from internal events.

Flask-free. One request may carry several prompts (and ``n`` answers each): their answers
arrive one after the other in one event stream, each ended by exactly one ``Finished``
(``serving/completions.py`` makes it so), and become the choices ``0, 1, …`` in that order.
The shapes are the openai SDK's ``Completion``/``CompletionChoice``: no role chunk, ``text``
instead of ``delta``, ``logprobs: null``; reasoning is not part of this API and is left out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import ApiError
from ..events import Event, Finished, TextDelta, Usage
from .openai import DONE, PING, Collected, sse, usage_dict


@dataclass
class Choices:
    """The answers of a request's prompts, filled in as their events arrive."""

    answers: list[Collected] = field(default_factory=list)

    def add(self, index: int, event: Event) -> None:
        while len(self.answers) <= index:
            self.answers.append(Collected())
        self.answers[index].add(event)


class TextCompletionAnswer:
    """The ``Answer`` (``wire/render.py``) of a legacy completion: its JSON body and its chunks."""

    def __init__(
        self,
        *,
        model: str,
        prompts: list[str],
        choices: Choices,
        echo: bool = False,
        include_usage: bool = False,
    ) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.prompts = prompts  # one per choice (a prompt repeated for n > 1)
        self.choices = choices
        self.echo = echo
        self.include_usage = include_usage

    def body(self, collected: Collected, fields: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002 - Answer's
        """The ``text_completion`` object; ``collected`` (all choices together) gives the usage."""
        choices = []
        for index, prompt in enumerate(self.prompts):
            answer = self.choices.answers[index] if index < len(self.choices.answers) else Collected()
            choices.append(
                {
                    "text": (prompt if self.echo else "") + answer.text,
                    "index": index,
                    "logprobs": None,
                    "finish_reason": answer.finish_reason or "stop",
                }
            )
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_dict(collected.usage),
        }

    def renderer(self, collected: Collected, fields: dict[str, Any]) -> TextCompletionChunks:  # noqa: ARG002
        return TextCompletionChunks(self)


class TextCompletionChunks:
    """The ``text_completion`` chunks of a streamed answer (a ``wire.render.Renderer``)."""

    keepalive = PING

    def __init__(self, answer: TextCompletionAnswer) -> None:
        self.answer = answer
        self.index = 0  # the choice the next text belongs to
        self.usage: Usage | None = None

    def chunk(self, text: str, finish_reason: str | None = None) -> str:
        body: dict[str, Any] = {
            "id": self.answer.id,
            "object": "text_completion",
            "created": self.answer.created,
            "model": self.answer.model,
            "choices": [{"text": text, "index": self.index, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.answer.include_usage:
            body["usage"] = None
        return sse(body)

    def _begin(self) -> list[str]:
        """A choice's first chunk: its prompt, when ``echo`` asks for it."""
        if self.answer.echo and self.index < len(self.answer.prompts):
            return [self.chunk(self.answer.prompts[self.index])]
        return []

    def start(self) -> list[str]:
        return self._begin()

    def render(self, event: Event) -> list[str]:
        if isinstance(event, TextDelta) and event.text and self.index < len(self.answer.prompts):
            return [self.chunk(event.text)]
        if isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished) and self.index < len(self.answer.prompts):
            out = [self.chunk("", event.reason)]
            self.index += 1
            return out + self._begin()
        return []

    def finish(self, reason: str) -> list[str]:
        out = [self.chunk("", reason)] if self.index < len(self.answer.prompts) else []
        self.index = len(self.answer.prompts)
        if self.answer.include_usage:
            out.append(
                sse(
                    {
                        "id": self.answer.id,
                        "object": "text_completion",
                        "created": self.answer.created,
                        "model": self.answer.model,
                        "choices": [],
                        "usage": usage_dict(self.usage),
                    }
                )
            )
        return out

    def error(self, err: ApiError) -> list[str]:
        return [sse(err.to_dict())]

    def close(self) -> list[str]:
        return [DONE]
