"""One turn of the Anthropic Messages API: the request as a chat turn (same providers, tool
emulation, stream loop and local history as chat completions), answered in Anthropic's shape."""

from __future__ import annotations

import time
from typing import Any

from flask import Response

from ..providers import ChatRequest, ModelCard, ProviderRegistry
from ..wire import anthropic
from ..wire.render import ReplayAnswer
from .chat import chat_turn
from .client_api import ClientApi, chat_completion_request

ANTHROPIC_CHAT_NAME = "Anthropic API Chat"


def served_model(registry: ProviderRegistry, requested: str, model_map: str | None) -> str | None:
    """The model that answers a requested name: ``claude-*`` through ``ANTHROPIC_MODEL_MAP``
    (``None``: the gateway's default model), any other name as it is."""
    if not requested.lower().startswith("claude"):
        return requested
    served = [card.id for card in registry.list_models()]
    return anthropic.resolve_model(requested, model_map, served)


def messages_turn(registry: ProviderRegistry, body: dict[str, Any], *, model_map: str | None) -> Response:
    """``POST /v1/messages``."""
    request = anthropic.parse(anthropic.MessagesRequest, body)
    converted = anthropic.convert(request)
    model = served_model(registry, request.model, model_map)
    provider = registry.for_model(model)
    req = chat_completion_request(converted, converted.messages, model=model, stream=request.stream)
    input_tokens = anthropic.estimate_tokens(request)
    shown: dict[str, str] = {}

    def answer(model_shown: str, provider_request: ChatRequest) -> ReplayAnswer:
        shown["model"] = model_shown
        renderer = anthropic.MessageRenderer(
            id=anthropic.message_id(),
            model=request.model,  # clients look their model up by the name they asked for
            input_tokens=input_tokens,
            thinking=bool(provider_request.options.get("thinking")),
            stop_sequences=converted.stop,
        )
        return ReplayAnswer(renderer)

    api = ClientApi(ANTHROPIC_CHAT_NAME, answer, options=converted.options)
    response = chat_turn(provider, req, simple=False, api=api)
    if shown.get("model"):
        response.headers["X-Served-Model"] = shown["model"]
    return response


def count_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/messages/count_tokens``: an estimate (``anthropic.TOKEN_RULE``)."""
    request = anthropic.parse(anthropic.CountTokensRequest, body)
    return {"input_tokens": anthropic.estimate_tokens(request)}


def model_list(cards: list[ModelCard], model_map: str | None) -> dict[str, Any]:
    """``GET /v1/models`` in Anthropic's shape: the ``claude-*`` families first (Claude Code's
    picker shows only those), each naming the model it maps to, then every served model."""
    served = [card.id for card in cards]

    def entry(model_id: str, name: str, created: int) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        return {"type": "model", "id": model_id, "display_name": name, "created_at": stamp}

    data = []
    for family in ("opus", "sonnet", "haiku"):
        target = anthropic.resolve_model(f"claude-{family}", model_map, served)
        if target:
            data.append(entry(f"claude-{family}", f"Claude {family.title()} → {target}", 0))
    data += [entry(card.id, card.id, card.created) for card in cards]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
