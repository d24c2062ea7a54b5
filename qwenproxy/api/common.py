"""What the chat routes share: reading the JSON body, validating it, running a turn."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Response, current_app, g, request

from ..errors import BadRequest
from ..providers import ChatRequest, ProviderRegistry
from ..qwen.modes import aspect_ratio
from ..serving.conversations import OPENAI_CHAT_NAME, Turn, open_chat, stored_history
from ..serving.streaming import serve
from ..wire.openai import Collected, completion_response
from ..wire.tools import ToolSpec

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


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


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty array (Сообщения не указаны)", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
        if isinstance(content, list) and not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
        ):
            raise BadRequest(
                f"messages[{i}].content parts must be objects with a `type`", param=f"messages[{i}].content"
            )
    if not any(m.get("role") == "user" for m in messages):
        raise BadRequest("No user message in `messages` (В запросе нет сообщений от пользователя)", param="messages")
    return messages


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise BadRequest(f"`{key}` must be a number between {lo} and {hi}", param=key)
    return float(value)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be a boolean", param="stream")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("`model` must be a string", param="model")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("`max_tokens` must be a positive integer", param="max_tokens")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("`stop` must be a string or an array of strings", param="stop")
    stream_options = body.get("stream_options")
    stream_options = {} if stream_options is None else stream_options
    if not isinstance(stream_options, dict):
        raise BadRequest("`stream_options` must be an object", param="stream_options")
    for key in ("chatId", "parentId", "chat_id", "parent_id"):
        if body.get(key) is not None and not isinstance(body.get(key), str):
            raise BadRequest(f"`{key}` must be a string", param=key)
    tools = body.get("tools")
    if tools is None and isinstance(body.get("functions"), list):  # legacy OpenAI field (seed §7.3)
        tools = [{"type": "function", "function": fn} for fn in body["functions"]]
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("`tools` must be an array", param="tools")
    tool_choice = body.get("tool_choice")
    if tool_choice is None and body.get("function_call") is not None:  # legacy
        legacy = body["function_call"]
        tool_choice = {"type": "function", "function": legacy} if isinstance(legacy, dict) else legacy
    ToolSpec.parse(tools, tool_choice, body.get("parallel_tool_calls"))  # 400 on malformed tools
    return {
        "stream": stream,
        "model": model,
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "stop": stop,
        "include_usage": bool(stream_options.get("include_usage")),
        "chat_id": body.get("chatId") or body.get("chat_id"),
        "parent_id": body.get("parentId") or body.get("parent_id"),
        "tools": tools,
        "tool_choice": tool_choice,
        "modes": _mode_fields(body),
    }


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def _mode_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Request fields that pick a mode (docs/MODES.md), as ``ChatRequest.options`` flags;
    they win over a model-name suffix."""
    out: dict[str, Any] = {}
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise BadRequest(f"`reasoning_effort` must be one of {list(REASONING_EFFORTS)}", param="reasoning_effort")
        out["thinking"] = effort != "none"
    thinking = body.get("enable_thinking")
    if thinking is not None:
        if not isinstance(thinking, bool):
            raise BadRequest("`enable_thinking` must be a boolean", param="enable_thinking")
        out["thinking"] = thinking
    budget = body.get("thinking_budget")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise BadRequest("`thinking_budget` must be a positive integer", param="thinking_budget")
        out["thinking_budget"] = budget
    search = body.get("web_search_options")
    if search is not None:
        if not isinstance(search, dict):
            raise BadRequest("`web_search_options` must be an object", param="web_search_options")
        out["search"] = True
    if body.get("enable_search") is not None:
        if not isinstance(body["enable_search"], bool):
            raise BadRequest("`enable_search` must be a boolean", param="enable_search")
        out["search"] = body["enable_search"]
    if body.get("size") is not None:
        try:
            out["image_size"] = aspect_ratio(body["size"])
        except ValueError as exc:
            raise BadRequest(str(exc), param="size") from None
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = bool(body["parallel_tool_calls"])
    return out


def run_chat(body: dict[str, Any], messages: list[dict[str, Any]], *, simple: bool) -> Response:
    """Serve one chat turn. ``simple`` is the seed's ``/api/chat``: the local history of the
    chat is replayed to providers that do not keep it upstream."""
    messages = _check_messages(messages)
    opts = _options(body)
    provider = registry().for_model(opts["model"])
    upstream_model, model, options = provider.resolve_request(opts["model"])
    options.update(opts["modes"])
    chat, is_new = open_chat(
        opts["chat_id"],
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
    new_messages = messages if is_new else messages[last_user:]
    send = messages
    if simple and not provider.server_side_history and not is_new:
        send = stored_history(chat) + messages[last_user:]
    chat_request = ChatRequest(
        model=upstream_model,
        messages=send,
        stream=opts["stream"],
        requested_model=opts["model"],
        conversation_id=chat.upstream_chat_id if provider.server_side_history else chat.id,
        parent_id=opts["parent_id"] or (chat.last_response_id if not is_new else None),
        account_id=chat.account_id,
        max_tokens=opts["max_tokens"],
        temperature=opts["temperature"],
        top_p=opts["top_p"],
        stop=opts["stop"],
        tools=opts["tools"],
        tool_choice=opts["tool_choice"],
        options=options,
        request_id=getattr(g, "request_id", "") or uuid.uuid4().hex,
    )
    turn = Turn(chat=chat, provider=provider.name, model=model)
    reasoning_in_content = bool(current_app.config.get("REASONING_IN_CONTENT"))
    turn.begin(new_messages)

    def extras(collected: Collected, info: dict[str, Any]) -> dict[str, Any]:
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
        stream=opts["stream"],
        model=model,
        extras=extras,
        include_usage=opts["include_usage"],
        ping_interval=float(current_app.config["PING_INTERVAL"]),
        shape=shape,
        reasoning_in_content=reasoning_in_content,
    )
