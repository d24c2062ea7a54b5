"""What the chat routes share: reading the JSON body, validating it, running a turn."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, request

from ..errors import BadRequest
from ..providers import ProviderRegistry
from ..serving.chat import chat_turn
from ..wire.openai import ChatCompletionRequest, parse_request


def json_body() -> dict[str, Any]:
    """The request's JSON object; anything else is a 4xx, never a 500 (checks: api/body.py)."""
    from .body import check_unicode, require_json_type

    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BadRequest("Request body must be a JSON object (Тело запроса пустое)")
    require_json_type()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("Request body is not valid UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"Invalid JSON (Некорректный JSON): {exc}") from None
    except RecursionError:
        raise BadRequest("Invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("Request body must be a JSON object")
    check_unicode(raw, data)
    return data


def registry() -> ProviderRegistry:
    return current_app.extensions["providers"]


def run_chat(body: dict[str, Any], messages: Any, *, simple: bool) -> Response:
    """Validate a chat request (``wire.openai.ChatCompletionRequest``) and serve its turn
    (``simple``: the seed's ``/api/chat``)."""
    req = parse_request(ChatCompletionRequest.parse, body, messages)
    return chat_turn(registry().for_model(req.model), req, simple=simple)
