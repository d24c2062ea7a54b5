"""One turn of the OpenAI Responses API, and the stored responses behind
``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``.

A stored response keeps the conversation up to and including its answer (as chat messages,
instructions excluded), the local chat and the upstream message to continue from, so any
worker of any gateway on the same database continues it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Response

from .. import db
from ..db.models import ApiResponse
from ..errors import BadRequest, NotFound
from ..providers import ChatRequest, ProviderRegistry
from ..wire import responses as wire
from ..wire.render import ReplayAnswer
from .chat import chat_turn
from .client_api import ClientApi, chat_completion_request
from .conversations import Turn

log = logging.getLogger(__name__)

RESPONSES_CHAT_NAME = "Responses API Chat"


def _echo(request: wire.ResponsesRequest) -> dict[str, Any]:
    """The request fields a response object repeats."""
    fmt = (
        request.text.format.model_dump(exclude_none=True, by_alias=True)
        if request.text and request.text.format
        else None
    )
    reasoning = request.reasoning
    return {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": fmt or {"type": "text"}},
        "tool_choice": request.tool_choice or "auto",
        "tools": [t.model_dump(exclude_none=True) for t in request.tools or []],
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "user": request.user,
    }


def find(response_id: str) -> ApiResponse | None:
    with db.session():
        return ApiResponse.get_or_none(ApiResponse.id == response_id)


def responses_turn(registry: ProviderRegistry, body: dict[str, Any]) -> Response:
    """``POST /v1/responses``."""
    request = wire.parse(wire.ResponsesRequest, body)
    converted = wire.convert(request)
    history: list[dict[str, Any]] = []
    chat_id = parent_id = None
    if request.previous_response_id:
        previous = find(request.previous_response_id)
        if previous is None:
            raise NotFound(
                f"Previous response with id '{request.previous_response_id}' not found.", param="previous_response_id"
            )
        history = json.loads(previous.history)
        chat_id, parent_id = previous.chat_id, previous.upstream_response_id
    messages = converted.with_history(history)
    if not any(m["role"] == "user" for m in messages):
        raise BadRequest("input: the conversation needs a user message", param="input")
    provider = registry.for_model(request.model)
    req = chat_completion_request(
        converted, messages, model=request.model, stream=request.stream, chat_id=chat_id, parent_id=parent_id
    )
    rid = wire.response_id()
    items = wire.input_items(request.input)
    renderers: list[wire.ResponseRenderer] = []

    def answer(model_shown: str, _request: ChatRequest) -> ReplayAnswer:
        renderer = wire.ResponseRenderer(id=rid, model=model_shown, echo=_echo(request), summary=converted.summary)
        renderers.append(renderer)
        return ReplayAnswer(renderer)

    def on_close(turn: Turn, status: str) -> None:
        if not request.store or not renderers:
            return
        renderer = renderers[0]
        if status == "complete":
            response = renderer.replay(turn.collected)
        elif renderer.started:  # a stream that failed in-band or lost its client
            response = renderer.response() if renderer.finished else renderer.interrupted()
        else:
            return  # a JSON request that failed: the client got an error, not a response id
        started = turn.collected.started
        ApiResponse.create(
            id=rid,
            chat=turn.chat.id,
            created=time.time(),
            model=response["model"],
            status=response["status"],
            previous_response_id=request.previous_response_id,
            upstream_response_id=started.response_id if started else None,
            body=json.dumps(response, ensure_ascii=False),
            input_items=json.dumps(items, ensure_ascii=False),
            history=json.dumps(history + converted.messages + wire.output_messages(response), ensure_ascii=False),
        )

    api = ClientApi(RESPONSES_CHAT_NAME, answer, on_close, options=converted.options)
    return chat_turn(provider, req, simple=False, api=api)


def _stored(response_id: str) -> ApiResponse:
    row = find(response_id)
    if row is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return row


def retrieve(response_id: str) -> dict[str, Any]:
    """``GET /v1/responses/{id}``."""
    return json.loads(_stored(response_id).body)


def delete(response_id: str) -> dict[str, Any]:
    """``DELETE /v1/responses/{id}``: the stored response goes (its local chat stays)."""
    row = _stored(response_id)
    with db.session():
        ApiResponse.delete().where(ApiResponse.id == row.id).execute()
    return {"id": row.id, "object": "response", "deleted": True}


def list_input_items(
    response_id: str, *, order: str = "desc", after: str | None = None, limit: int = 20
) -> dict[str, Any]:
    """``GET /v1/responses/{id}/input_items``: a cursor page, newest first by default."""
    if order not in ("asc", "desc"):
        raise BadRequest("order must be 'asc' or 'desc'", param="order")
    if not 1 <= limit <= 100:
        raise BadRequest("limit must be between 1 and 100", param="limit")
    items = json.loads(_stored(response_id).input_items)
    if order == "desc":
        items = items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise BadRequest(f"No input item with id '{after}'", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
