"""Local chat CRUD and cleanup (seed §7.9), kept in the database whatever model answered."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify
from peewee import JOIN, Case, fn

from ..db.models import Chat, Message
from ..errors import BadRequest, NotFound
from ..serving.conversations import default_chat_name, find_chat
from .common import json_body, registry

bp = Blueprint("chats", __name__)


def _chat_or_404(chat_id: str) -> Chat:
    chat = find_chat(chat_id)
    if chat is None:
        raise NotFound("Chat not found (Чат не найден)", code="chat_not_found")
    return chat


def _counted():
    """Chats with their message and user-message counts, in one portable query."""
    user_count = fn.SUM(Case(None, [((Message.role == "user"), 1)], 0))
    return (
        Chat.select(Chat, fn.COUNT(Message.id).alias("message_count"), fn.COALESCE(user_count, 0).alias("user_count"))
        .join(Message, JOIN.LEFT_OUTER)
        .group_by(Chat.id)
    )


@bp.post("/api/chats")
def create_chat() -> Response:
    body = json_body() if _has_body() else {}
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("`name` must be a string", param="name")
    model = body.get("model")
    provider = registry().for_model(model if isinstance(model, str) else None)
    chat = Chat.create(
        name=(name or "").strip() or default_chat_name(),
        provider=provider.name,
        model=provider.resolve_model(model if isinstance(model, str) else None),
    )
    return jsonify({"chatId": chat.id, "success": True})


def _has_body() -> bool:
    from flask import request

    return bool(request.get_data(cache=True).strip())


@bp.get("/api/chats")
def list_chats() -> Response:
    chats = _counted().order_by(Chat.created.desc())
    return jsonify(
        {
            "chats": [
                {
                    "id": c.id,
                    "name": c.name,
                    "created": c.created,
                    "model": c.model,
                    "messageCount": int(c.message_count),
                    "userMessageCount": int(c.user_count),
                }
                for c in chats
            ]
        }
    )


def _message_json(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": m.uid,
        "role": m.role,
        "content": m.content_value,
        "timestamp": int(m.created),
        "chat_type": "t2t",
        "model": m.model,
        "status": m.status,
    }
    if m.reasoning:
        out["reasoning_content"] = m.reasoning
    if m.role == "assistant":
        out["info"] = {
            "prompt_tokens": m.prompt_tokens,
            "completion_tokens": m.completion_tokens,
            "total_tokens": m.total_tokens,
            "response_id": m.response_id,
        }
    return out


@bp.get("/api/chats/<chat_id>")
def get_chat(chat_id: str) -> Response:
    chat = _chat_or_404(chat_id)
    messages = Message.select().where(Message.chat == chat).order_by(Message.id)
    return jsonify(
        {
            "chatId": chat.id,
            "history": {
                "id": chat.id,
                "name": chat.name,
                "created": chat.created,
                "model": chat.model,
                "messages": [_message_json(m) for m in messages],
            },
        }
    )


@bp.delete("/api/chats/<chat_id>")
def delete_chat(chat_id: str) -> Response:
    chat = _chat_or_404(chat_id)
    Message.delete().where(Message.chat == chat).execute()
    deleted = Chat.delete().where(Chat.id == chat.id).execute()
    return jsonify({"success": bool(deleted)})


@bp.put("/api/chats/<chat_id>/rename")
def rename_chat(chat_id: str) -> Response:
    body = json_body()
    chat = _chat_or_404(chat_id)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("`name` is missing or invalid (Имя чата не указано или некорректно)", param="name")
    Chat.update(name=name.strip()).where(Chat.id == chat.id).execute()
    return jsonify({"success": True, "chatId": chat.id, "name": name.strip()})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@bp.post("/api/chats/cleanup")
def cleanup() -> Response:
    body = json_body() if _has_body() else {}
    older = body.get("olderThan")
    user_lt = body.get("userMessageCountLessThan")
    msg_lt = body.get("messageCountLessThan")
    max_chats = body.get("maxChats")
    if older and not (_is_number(older) and older > 0):
        raise BadRequest("Invalid olderThan (Некорректное значение olderThan)", param="olderThan")
    if user_lt is not None and not (_is_number(user_lt) and user_lt >= 0):
        raise BadRequest(
            "Invalid userMessageCountLessThan (Некорректное значение userMessageCountLessThan)",
            param="userMessageCountLessThan",
        )
    if msg_lt is not None and not (_is_number(msg_lt) and msg_lt >= 0):
        raise BadRequest(
            "Invalid messageCountLessThan (Некорректное значение messageCountLessThan)", param="messageCountLessThan"
        )
    if max_chats is not None and not (_is_number(max_chats) and max_chats > 0):
        raise BadRequest("Invalid maxChats (Некорректное значение maxChats)", param="maxChats")
    delete_all = body.get("all") is True
    has_filter = bool(older) or user_lt is not None or msg_lt is not None
    if not (delete_all or has_filter or max_chats):
        raise BadRequest(
            "Give at least one filter (olderThan, userMessageCountLessThan, messageCountLessThan, maxChats) "
            'or {"all": true} to delete every chat',
            code="cleanup_needs_filter",
        )
    doomed: set[str] = set()
    if delete_all or has_filter:
        for chat in _counted():
            if older and not chat.created < time.time() * 1000 - older:
                continue
            if user_lt is not None and not int(chat.user_count) < user_lt:
                continue
            if msg_lt is not None and not int(chat.message_count) < msg_lt:
                continue
            doomed.add(chat.id)
    if max_chats:
        total = Chat.select().count()
        if total > max_chats:
            oldest = Chat.select(Chat.id).order_by(Chat.created.asc()).limit(int(total - max_chats))
            doomed.update(c.id for c in oldest)
    ids = sorted(doomed)
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        Message.delete().where(Message.chat.in_(batch)).execute()
        Chat.delete().where(Chat.id.in_(batch)).execute()
    return jsonify({"success": True, "deletedCount": len(ids), "deletedChats": ids})
