"""A client API other than OpenAI chat completions, as a chat turn needs to know it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..providers import ChatRequest
from ..wire.openai import ChatCompletionRequest, parse_request
from ..wire.render import Answer
from .conversations import Turn


@dataclass
class ClientApi:
    """How the Anthropic and Responses routes differ from chat completions in a turn: the
    name of a new local chat, their answer (body and stream), what happens at its end, and
    provider options their requests set that chat completions has no field for."""

    chat_name: str
    answer: Callable[[str, ChatRequest], Answer]  # (model shown, the provider request)
    on_close: Callable[[Turn, str], None] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # ChatRequest.options (thinking, response_format…)


def chat_completion_request(
    converted: Any,
    messages: list[dict[str, Any]],
    *,
    model: str | None,
    stream: bool,
    chat_id: str | None = None,
    parent_id: str | None = None,
) -> ChatCompletionRequest:
    """The chat completions request a converted Messages or Responses request amounts to
    (validated like one; the options chat completions has no field for go in ``ClientApi``)."""
    body = {
        "model": model,
        "stream": stream,
        "max_tokens": converted.max_tokens,
        "temperature": converted.temperature,
        "top_p": converted.top_p,
        "stop": getattr(converted, "stop", None),
        "tools": converted.tools,
        "tool_choice": converted.tool_choice,
        "parallel_tool_calls": converted.options.get("parallel_tool_calls"),
        "chatId": chat_id,
        "parentId": parent_id,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return parse_request(ChatCompletionRequest.parse, body, messages)
