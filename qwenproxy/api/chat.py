"""The seed's simple chat format: ``POST /api/chat`` with ``message`` or ``messages``."""

from __future__ import annotations

from flask import Blueprint, Response

from ..errors import BadRequest
from .common import json_body, run_chat

bp = Blueprint("chat", __name__)


@bp.post("/api/chat")
def chat() -> Response:
    body = json_body()
    messages = body.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        return run_chat(body, messages, simple=True)
    message = body.get("message")
    if message is None or message == "" or message == []:
        raise BadRequest("`message` is required (Сообщение не указано)", param="message")
    if not isinstance(message, (str, list)):
        raise BadRequest(
            "`message` must be a string or an array of parts (Неподдерживаемый формат сообщения)", param="message"
        )
    if isinstance(message, list) and not all(
        isinstance(p, dict) and p.get("type") in ("text", "image", "file", "image_url") for p in message
    ):
        raise BadRequest("Malformed message parts (Некорректная структура составного сообщения)", param="message")
    return run_chat(body, [{"role": "user", "content": message}], simple=True)
