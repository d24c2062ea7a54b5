"""A client API other than OpenAI chat completions, as a chat turn needs to know it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..providers import ChatRequest
from ..wire.render import Answer
from .conversations import Turn


@dataclass
class ClientApi:
    """How the Anthropic and Responses routes differ from chat completions in a turn: the
    name of a new local chat, their answer (body and stream), and what happens at its end."""

    chat_name: str
    answer: Callable[[str, ChatRequest], Answer]  # (model shown, the provider request)
    on_close: Callable[[Turn, str], None] | None = None
