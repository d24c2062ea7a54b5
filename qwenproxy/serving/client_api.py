"""A client API other than OpenAI chat completions, as a chat turn needs to know it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..providers import ChatRequest
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
