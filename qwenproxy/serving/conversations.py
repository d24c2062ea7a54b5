"""Local chat history: which chat a request belongs to, and saving every turn.

Flask-free. A ``Turn`` is opened before the upstream call (the user's messages are saved at
once) and closed when the answer ends, complete, partial or failed, so nothing is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peewee import ModelSelect

from .. import db
from ..db import statements
from ..db.models import Chat, Message, now_ms
from ..events import Event, ResponseStarted
from ..wire.openai import Collected

log = logging.getLogger(__name__)

OPENAI_CHAT_NAME = "OpenAI API Chat"


def default_chat_name() -> str:
    return "Новый чат " + time.strftime("%d.%m.%Y %H:%M:%S")


def find_chat(chat_id: str) -> Chat | None:
    """A chat by our id, or by the upstream id a client may have kept from elsewhere."""
    return Chat.get_or_none(Chat.id == chat_id) or Chat.get_or_none(Chat.upstream_chat_id == chat_id)


def open_chat(
    chat_id: str | None,
    *,
    provider: str,
    model: str,
    name: str | None = None,
    adopt_upstream: bool = False,
) -> tuple[Chat, bool]:
    """The chat for a request and whether it is new.

    An unknown ``chat_id`` is adopted: for a provider with server-side history it is taken
    to be the upstream conversation id (a chat created elsewhere).
    """
    if chat_id:
        chat = find_chat(chat_id)
        if chat is not None:
            return chat, False
        chat = statements.create(
            Chat,
            id=chat_id,
            name=name or default_chat_name(),
            provider=provider,
            model=model,
            upstream_chat_id=chat_id if adopt_upstream else None,
        )
        return chat, True
    return statements.create(Chat, name=name or default_chat_name(), provider=provider, model=model), True


def kept_messages(chat: Chat, bot: str | None = None) -> ModelSelect:
    """The chat's messages without failed exchanges (``status = error``), oldest first;
    only one Dual AI Chat bot's when ``bot`` is given."""
    query = Message.select().where((Message.chat == chat) & (Message.status != "error"))
    if bot:
        query = query.where(Message.bot == bot)
    return query.order_by(Message.id)


def last_messages(chat: Chat, limit: int | None = None) -> list[Message]:
    """The last ``limit`` kept messages (all when ``None`` or 0), oldest first."""
    query = kept_messages(chat).order_by(Message.id.desc())
    if limit:
        query = query.limit(limit)
    return list(query)[::-1]


def stored_history(chat: Chat, limit: int | None = None) -> list[dict[str, Any]]:
    """The chat's messages as OpenAI messages, oldest first (the last ``limit`` if given)."""
    return [{"role": m.role, "content": m.content_value} for m in last_messages(chat, limit)]


def save_message(chat: Chat, role: str, content: Any, **fields: Any) -> int:
    """Insert one message (its SQL built once: ``db/statements.py``); returns its row id."""
    text, is_json = Message.encode_content(content)
    return statements.insert(Message, chat=chat.id, role=role, content=text, content_is_json=is_json, **fields)


@dataclass
class Turn:
    """One request/answer exchange being recorded."""

    chat: Chat
    provider: str
    model: str
    collected: Collected = field(default_factory=Collected)
    info: dict[str, Any] = field(default_factory=dict)
    closed: bool = False
    # called at the end of ``close`` with the status, in the same database session (the
    # Responses API stores its answer there)
    on_close: Callable[[Turn, str], None] | None = None
    # called with the answer and the stream's info after a complete answer is saved, in the
    # same database session (serving/history.py remembers the conversation point there)
    on_complete: Callable[[Collected, dict[str, Any]], None] | None = None

    def begin(self, new_messages: list[dict[str, Any]]) -> None:
        """Save the user's messages (one transaction, or the caller's)."""
        with db.session(), db.write_transaction():
            for message in new_messages:
                save_message(
                    self.chat,
                    str(message.get("role", "user")),
                    message.get("content", ""),
                    model=self.model,
                    provider=self.provider,
                )

    def observe(self, event: Event) -> None:
        self.collected.add(event)

    def close(self, status: str, error: str | None = None, also: Callable[[], None] | None = None) -> None:  # noqa: ARG002 - callers report it; DualTurn's
        """Save the answer (``complete``, ``partial`` or ``error``), the chat's upstream ids,
        the writes deferred until a turn ends (``db.flush_deferred``: the accounts' usage) and
        ``also`` (the request-log row) in one transaction."""
        if self.closed:
            return
        self.closed = True
        c = self.collected
        started: ResponseStarted | None = c.started
        try:
            with db.session(), db.write_transaction():
                if started is not None or c.text or c.reasoning or c.tool_calls:
                    content: Any = c.text
                    if c.tool_calls:
                        content = {"content": c.text, "tool_calls": [c.tool_calls[i] for i in sorted(c.tool_calls)]}
                    save_message(
                        self.chat,
                        "assistant",
                        content,
                        reasoning=c.reasoning or None,
                        model=self.model,
                        provider=self.provider,
                        upstream_chat_id=(started.chat_id if started else None) or self.info.get("upstream_chat_id"),
                        response_id=started.response_id if started else None,
                        parent_id=started.parent_id if started else None,
                        prompt_tokens=c.usage.prompt_tokens if c.usage else None,
                        completion_tokens=c.usage.completion_tokens if c.usage else None,
                        total_tokens=c.usage.total_tokens if c.usage else None,
                        usage_raw=json.dumps(c.usage.raw) if c.usage and c.usage.raw else None,
                        finish_reason=c.finish_reason or (None if status == "complete" else status),
                        status=status,
                    )
                updates: dict[str, Any] = {"updated": now_ms(), "model": self.model}
                upstream_chat = (started.chat_id if started else None) or self.info.get("upstream_chat_id")
                if upstream_chat:
                    updates["upstream_chat_id"] = upstream_chat
                    if self.info.get("account_id"):
                        updates["account_id"] = self.info["account_id"]
                if started is not None and started.response_id and status == "complete":
                    updates["last_response_id"] = started.response_id
                statements.update(Chat, self.chat.id, **updates)
                if self.on_close is not None:
                    self.on_close(self, status)
                if status == "complete" and self.on_complete is not None:
                    self.on_complete(c, self.info)
                db.flush_deferred()
                if also is not None:
                    also()
        except Exception:
            log.exception("could not save the answer of chat %s", self.chat.id)
