"""OpenAI-compatible routes: chat completions, legacy completions and the model list."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from ..serving.completions import completion_turn
from ..serving.messages import model_list
from ..wire.openai import CompletionRequest, parse_request
from .common import json_body, registry, run_chat

bp = Blueprint("openai", __name__)


@bp.post("/api/chat/completions")
def chat_completions() -> Response:
    body = json_body()
    return run_chat(body, body.get("messages"), simple=False)


@bp.post("/api/completions")
def completions() -> Response:
    req = parse_request(CompletionRequest.model_validate, json_body())
    return completion_turn(registry().for_model(req.model), req)


@bp.get("/api/models")
def models() -> Response:
    cards = registry().list_models()
    if request.headers.get("anthropic-version"):  # Anthropic clients: Claude Code's model picker
        return jsonify(model_list(cards, current_app.config.get("ANTHROPIC_MODEL_MAP")))
    return jsonify(
        {
            "object": "list",
            "data": [
                {"id": c.id, "object": "model", "created": c.created, "owned_by": c.owned_by, **c.extra} for c in cards
            ],
        }
    )
