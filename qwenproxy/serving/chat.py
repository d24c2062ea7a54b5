"""One chat turn of the OpenAI and seed chat routes: the local chat, the provider request,
the stream loop. The route has validated the request already."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, current_app, g

from .. import db
from ..events import EventStream
from ..providers import ChatRequest, Provider
from ..wire.openai import ChatCompletionRequest, Collected, completion_response
from . import history, videos
from .client_api import ClientApi
from .conversations import OPENAI_CHAT_NAME, Turn, open_chat, stored_history
from .streaming import serve
from .structured import OPTION as RESPONSE_FORMAT
from .structured import open_stream


def _history(chat: Any) -> list[dict[str, Any]]:
    """The chat's stored messages as OpenAI messages, read only when a provider must move the
    conversation to a new upstream chat (Qwen's "in progress", 2026 §3)."""
    with db.session():
        stored = stored_history(chat)
    out = []
    for message in stored:
        content = message.get("content")
        if isinstance(content, dict):  # an assistant turn saved with its tool calls
            out.append({**message, "content": content.get("content"), "tool_calls": content.get("tool_calls")})
        else:
            out.append(message)
    return out


def chat_turn(
    provider: Provider, req: ChatCompletionRequest, *, simple: bool, api: ClientApi | None = None
) -> Response:
    """Serve one validated chat turn with ``provider``. ``simple`` is the seed's ``/api/chat``:
    the local history of the chat is replayed to providers that do not keep it upstream.
    ``api`` answers in another client API's shape (Anthropic Messages, Responses)."""
    messages = req.messages
    chat_id, parent_id = req.conversation
    upstream_model, model, options = provider.resolve_request(req.model)
    options.update(req.mode_options())
    if api is not None:
        options.update(api.options)
    if req.response_format is not None:
        options[RESPONSE_FORMAT] = req.response_format
    # a stateless client (no chatId) re-sends its history: continue the upstream chat that
    # holds it, or fold it into a new one (serving/history.py)
    plan = None
    if provider.server_side_history and not simple and not chat_id:
        plan = history.plan(messages, matching=bool(current_app.config.get("QWEN_HISTORY_MATCHING", True)))
    with db.session(), db.write_transaction():  # the chat and the user's messages: one commit
        chat, is_new = open_chat(
            plan.local_chat_id if plan else chat_id,
            provider=provider.name,
            model=model,
            name=None if simple else api.chat_name if api else OPENAI_CHAT_NAME,
            adopt_upstream=provider.server_side_history,
        )
        # a new chat stores everything the client sent; a continuing one only the new turn
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        if last_user < last_assistant < len(messages) - 1:
            last_user = last_assistant + 1  # a tool loop: the new turn is the results after the call
        new_messages = messages if is_new else messages[plan.known if plan else last_user :]
        turn = Turn(chat=chat, provider=provider.name, model=model, on_close=api.on_close if api else None)
        turn.begin(new_messages)
    send = messages
    if simple and not provider.server_side_history and not is_new:
        send = stored_history(chat) + messages[last_user:]
    chat_request = ChatRequest(
        model=upstream_model,
        messages=send,
        stream=req.stream,
        requested_model=req.model,
        conversation_id=chat.upstream_chat_id if provider.server_side_history else chat.id,
        parent_id=parent_id or (chat.last_response_id if not is_new else None),
        account_id=chat.account_id,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stop,
        tools=req.tools,
        tool_choice=req.tool_choice,
        tool_spec=req.tool_spec,
        options=options,
        request_id=getattr(g, "request_id", "") or uuid.uuid4().hex,
        history=lambda: _history(chat),
    )
    if plan is not None:
        chat_request.conversation_id = plan.upstream_chat_id
        chat_request.parent_id = plan.parent_id
        chat_request.account_id = plan.account_id
        chat_request.upstream_known = plan.known
        turn.on_complete = history.recorder(messages, chat.id, current_app.config.get("MAX_CONTENT_LENGTH"))
    # structured output: the content is the JSON alone, so reasoning stays in its own field
    reasoning_in_content = bool(current_app.config.get("REASONING_IN_CONTENT")) and RESPONSE_FORMAT not in options

    def extras(collected: Collected, _info: dict[str, Any]) -> dict[str, Any]:
        rid = collected.started.response_id if collected.started else None
        return {"chatId": chat.id, "parentId": rid}

    def shape(collected: Collected, fields: dict[str, Any]) -> dict[str, Any]:
        rid = collected.started.response_id if collected.started else None
        body_out = completion_response(
            collected,
            id=rid or f"chatcmpl-{uuid.uuid4().hex}",
            model=model,
            extras=fields,
            reasoning_in_content=reasoning_in_content,
        )
        if simple:
            body_out["response_id"] = rid
        return body_out

    def stream_factory() -> EventStream:
        if options.get("video"):  # a t2v task: polled, not streamed (serving/videos.py)
            polling = videos.Polling.from_config(current_app.config)
            registry = current_app.extensions["providers"]
            return videos.chat_stream(provider, chat_request, registry, polling, model=model)
        return open_stream(provider, chat_request)

    return serve(
        stream_factory,
        turn,
        stream=req.stream,
        model=model,
        extras=extras,
        include_usage=req.include_usage,
        ping_interval=float(current_app.config["PING_INTERVAL"]),
        shape=shape,
        reasoning_in_content=reasoning_in_content,
        answer=api.answer(model, chat_request) if api else None,
    )
