"""The seed's simple chat format: ``POST /api/chat`` with ``message`` or ``messages``."""

from __future__ import annotations

from flask import Blueprint, Response

from ..wire.openai import SimpleChatRequest, parse_request
from .common import json_body, run_chat

bp = Blueprint("chat", __name__)


@bp.post("/api/chat")
def chat() -> Response:
    body = json_body()
    return run_chat(body, parse_request(SimpleChatRequest.messages_of, body), simple=True)
