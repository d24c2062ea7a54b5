"""One chat turn of the OpenAI and seed chat routes: the local chat, the provider request,
the stream loop. The route has validated the request already."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, current_app, g

from .. import db
from ..providers import ChatRequest, Provider
from ..wire.openai import ChatCompletionRequest, Collected, completion_response
from . import history
from .conversations import OPENAI_CHAT_NAME, Turn, open_chat, stored_history
from .streaming import serve


def chat_turn(provider: Provider, req: ChatCompletionRequest, *, simple: bool) -> Response:
    """Serve one validated chat turn with ``provider``. ``simple`` is the seed's ``/api/chat``:
    the local history of the chat is replayed to providers that do not keep it upstream."""
    messages = req.messages
    chat_id, parent_id = req.conversation
    upstream_model, model, options = provider.resolve_request(req.model)
    options.update(req.mode_options())
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
            name=None if simple else OPENAI_CHAT_NAME,
            adopt_upstream=provider.server_side_history,
        )
        # a new chat stores everything the client sent; a continuing one only the new turn
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
        if last_user < last_assistant < len(messages) - 1:
            last_user = last_assistant + 1  # a tool loop: the new turn is the results after the call
        new_messages = messages if is_new else messages[plan.known if plan else last_user :]
        turn = Turn(chat=chat, provider=provider.name, model=model)
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
    )
    if plan is not None:
        chat_request.conversation_id = plan.upstream_chat_id
        chat_request.parent_id = plan.parent_id
        chat_request.account_id = plan.account_id
        chat_request.upstream_known = plan.known
        turn.on_complete = history.recorder(messages, chat.id)
    reasoning_in_content = bool(current_app.config.get("REASONING_IN_CONTENT"))

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

    return serve(
        lambda: provider.open_stream(chat_request),
        turn,
        stream=req.stream,
        model=model,
        extras=extras,
        include_usage=req.include_usage,
        ping_interval=float(current_app.config["PING_INTERVAL"]),
        shape=shape,
        reasoning_in_content=reasoning_in_content,
    )
