"""Anthropic's Messages API (Claude Code, Cline, OpenCode): ``/v1/messages`` and its token count.

Also under ``/anthropic/v1/…``, for clients whose base URL must name the API. Errors on
these paths are rendered in Anthropic's shape (``api/errors.py``).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ..serving.messages import count_tokens, messages_turn
from .common import json_body, registry

bp = Blueprint("anthropic", __name__)

PREFIXES = ("/api/messages", "/anthropic/")


@bp.post("/api/messages")
@bp.post("/anthropic/v1/messages")
def messages() -> Response:
    return messages_turn(registry(), json_body(), model_map=current_app.config.get("ANTHROPIC_MODEL_MAP"))


@bp.post("/api/messages/count_tokens")
@bp.post("/anthropic/v1/messages/count_tokens")
def messages_count_tokens() -> Response:
    return jsonify(count_tokens(json_body()))
