"""The seed's Dual AI Chat turn: one chat per ``session_id``, shared by two bots.

The prompt is the session's last ``DUAL_HISTORY_TURNS`` kept messages plus the query; every
row records its bot; a failed exchange hides its user row too (the seed stored nothing)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, g
from peewee import IntegrityError

from .. import db
from ..db.models import Chat, Message
from ..providers import ChatRequest, Provider
from ..wire.openai import Collected
from ..wire.seed import seed_json
from .conversations import Turn, last_messages, save_message
from .streaming import serve

log = logging.getLogger(__name__)


def find_session(session_id: str) -> Chat | None:
    return Chat.get_or_none(Chat.session_id == session_id)


def session_chat(session_id: str) -> Chat:
    """The chat holding a seed session's history, created on its first message."""
    chat = find_session(session_id)
    if chat is not None:
        return chat
    try:
        with db.database.atomic():
            return Chat.create(session_id=session_id, name=f"Dual AI Chat: {session_id}"[:500], provider="dual")
    except IntegrityError:  # a concurrent first message created it
        return Chat.get(Chat.session_id == session_id)


def prompt_history(chat: Chat, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` messages of the session, from both bots, oldest first."""
    if limit <= 0:
        return []
    return [{"role": m.role, "content": m.content} for m in last_messages(chat, limit)]


def build_messages(chat: Chat, query: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system_prompt = current_app.config.get("DEFAULT_SYSTEM_PROMPT")
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(prompt_history(chat, int(current_app.config.get("DUAL_HISTORY_TURNS", 10))))
    messages.append({"role": "user", "content": query})
    return messages


@dataclass
class DualTurn(Turn):
    """A ``Turn`` whose rows record the bot, and whose failure hides the user's row too."""

    bot: str = "gigachat"
    user_row: int = 0

    def begin(self, new_messages: list[dict[str, Any]]) -> None:
        with db.session():
            for message in new_messages:
                self.user_row = save_message(
                    self.chat,
                    str(message.get("role", "user")),
                    message.get("content", ""),
                    model=self.model,
                    provider=self.provider,
                    bot=self.bot,
                )

    def close(self, status: str, error: str | None = None, also: Callable[[], None] | None = None) -> None:
        if self.closed:
            return
        super().close(status, error=error, also=also)
        try:
            with db.session():
                Message.update(bot=self.bot).where(
                    (Message.chat == self.chat)
                    & (Message.id > self.user_row)
                    & (Message.provider == self.provider)
                    & Message.bot.is_null()
                ).execute()
                if status == "error":
                    Message.update(status="error").where(Message.id == self.user_row).execute()
        except Exception:
            log.exception("could not label the answer of session chat %s", self.chat.id)


def _no_extras(_collected: Collected, _info: dict[str, Any]) -> dict[str, Any]:
    return {}


def run_bot(
    bot: str,
    provider: Provider,
    *,
    query: str,
    session_id: str,
    stream: bool,
    shape: Any,
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    options: dict[str, Any] | None = None,
) -> Response:
    """One exchange: the session's history plus the query, stored when it ends."""
    model = provider.resolve_model(model)
    chat = session_chat(session_id)
    messages = build_messages(chat, query)
    chat_request = ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        requested_model=model,
        conversation_id=chat.id,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        options=dict(options or {}),
        request_id=getattr(g, "request_id", "") or uuid.uuid4().hex,
    )
    turn = DualTurn(chat=chat, provider=provider.name, model=model, bot=bot)
    turn.begin([{"role": "user", "content": query}])
    body: dict[str, Any] = {}

    def shape_body(collected: Collected, _fields: dict[str, Any]) -> dict[str, Any]:
        body.update(shape(collected))
        return body

    response = serve(
        lambda: provider.open_stream(chat_request),
        turn,
        stream=stream,
        model=model,
        extras=_no_extras,
        include_usage=True,
        ping_interval=float(current_app.config["PING_INTERVAL"]),
        shape=shape_body,
    )
    if stream:
        return response
    return seed_json(body)
