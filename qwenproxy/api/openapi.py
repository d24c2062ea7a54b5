"""``/api/openapi.json``, built from the routes (Flask's URL map) and the request models.

Each route has one entry below (its operation id, summary, request model, answers); the
schemas come from the pydantic models of ``wire/``, converted to OpenAPI 3.0. A route
without an entry is still listed (``test_ops`` checks that none is missing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Flask
from pydantic import BaseModel

from ..config import VERSION
from ..wire import anthropic, media, openai, responses, seed

REF = "#/components/schemas/{model}"
OBJECT = {"type": "object"}


@dataclass(frozen=True)
class Operation:
    """What the document says of one route."""

    operation_id: str
    summary: str = ""
    body: type[BaseModel] | None = None
    body_required: bool = True
    multipart: bool = False
    also_json: bool = False  # a multipart body that may come as JSON too
    query: type[BaseModel] | None = None
    path: dict[str, dict[str, Any]] = field(default_factory=dict)  # path parameter → schema
    ok: dict[str, Any] = field(default_factory=lambda: {"description": "OK", "content": _json(OBJECT)})
    errors: tuple[int, ...] = (401, 429)
    public: bool = False  # answers without an API key
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # other answers (e.g. 503 not ready)
    error_shape: str = "Error"  # the components/responses entry errors refer to ("AnthropicError")
    security: list[dict[str, list[str]]] | None = None  # other ways to send the key
    headers: tuple[str, ...] = ()  # optional request headers the route reads


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _ok(schema: dict[str, Any], description: str = "OK", media: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _obj(*required: str, **properties: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if required:
        out["required"] = list(required)
    if properties:
        out["properties"] = properties
    return out


STRING = {"type": "string"}
CHAT_ERRORS = (400, 401, 404, 405, 413, 415, 429, 402, 409, 502, 503)  # 415: not application/json
DUAL_ERRORS = (400, 401, 422, 429, 402, 409, 502, 503)
CHAT_OK = {
    "description": "OK",
    "content": {**_json(_ref(openai.ChatCompletion)), "text/event-stream": {"schema": STRING}},
}
CHAT_ID = {"chat_id": {"name": "chatId", "type": "string", "minLength": 1, "maxLength": 64}}
FILE_ID = {"file_id": {"type": "string", "minLength": 1, "maxLength": 100}}
FILE_OBJECT = _obj("id", id=STRING, object=STRING, bytes={"type": "integer"}, filename=STRING, purpose=STRING)
NOT_READY = {"503": _ok(OBJECT, "Not ready, or draining")}
VIDEO_ID = {"video_id": {"type": "string", "minLength": 1, "maxLength": 100}}
VIDEO_ERRORS = (400, 401, 413, 429, 502, 503)
BINARY = {"type": "string", "format": "binary"}

MESSAGE = _obj("id", "type", "role", "content", "stop_reason", "usage")
ANTHROPIC_ERRORS = (400, 401, 404, 413, 429, 500, 529)
ANTHROPIC_AUTH = [{}, {"bearerAuth": []}, {"apiKeyHeader": []}]
MESSAGES = Operation(
    "createMessage",
    "Anthropic Messages (Claude Code, Cline, OpenCode), streamed (SSE) or not; also under /anthropic/v1",
    body=anthropic.MessagesRequest,
    ok={"description": "OK", "content": {**_json(MESSAGE), "text/event-stream": {"schema": STRING}}},
    errors=ANTHROPIC_ERRORS,
    error_shape="AnthropicError",
    security=ANTHROPIC_AUTH,
    headers=("anthropic-version", "anthropic-beta"),
)
COUNT_TOKENS = Operation(
    "countMessageTokens",
    "An estimate of a Messages request's input tokens: " + anthropic.TOKEN_RULE,
    body=anthropic.CountTokensRequest,
    ok=_ok(_obj("input_tokens", input_tokens={"type": "integer"})),
    errors=ANTHROPIC_ERRORS,
    error_shape="AnthropicError",
    security=ANTHROPIC_AUTH,
    headers=("anthropic-version", "anthropic-beta"),
)
ANTHROPIC_TYPES = sorted(set(anthropic.ERROR_TYPES.values()))
RESPONSE = _obj("id", "object", "status", "output", id=STRING, object=STRING, status=STRING, output={"type": "array"})
RESPONSE_ID = {"response_id": {"type": "string", "minLength": 1, "maxLength": 64}}

OPERATIONS: dict[str, Operation] = {
    "openai.chat_completions": Operation(
        "createChatCompletion",
        "OpenAI chat completions, streamed (SSE) or not",
        body=openai.ChatCompletionRequest,
        ok=CHAT_OK,
        errors=CHAT_ERRORS,
    ),
    "openai.completions": Operation(
        "createCompletion",
        "OpenAI legacy completions (text_completion), streamed (SSE) or not; each prompt a chat turn",
        body=openai.CompletionRequest,
        ok={
            "description": "OK",
            "content": {**_json(_ref(openai.TextCompletion)), "text/event-stream": {"schema": STRING}},
        },
        errors=CHAT_ERRORS,
    ),
    "chat.chat": Operation(
        "simpleChat",
        "The seed's chat format: message or messages",
        body=openai.SimpleChatRequest,
        ok=CHAT_OK,
        errors=CHAT_ERRORS,
    ),
    "openai.models": Operation("listModels", "OpenAI model list", ok=_ok(_ref(openai.ModelList))),
    "status.status": Operation("status", "Accounts and providers, JSON"),
    "chats.list_chats": Operation("listChats", ok=_ok(_obj("chats", chats={"type": "array"}))),
    "chats.create_chat": Operation(
        "createChat",
        body=seed.CreateChatRequest,
        body_required=False,
        ok=_ok(_obj("chatId", chatId=STRING, success={"type": "boolean"})),
        errors=(400, 401, 413, 415, 429, 503),
    ),
    "chats.get_chat": Operation("getChat", path=CHAT_ID, errors=(401, 404, 429)),
    "chats.delete_chat": Operation("deleteChat", path=CHAT_ID, errors=(401, 404, 429)),
    "chats.rename_chat": Operation(
        "renameChat", body=seed.RenameChatRequest, path=CHAT_ID, errors=(400, 401, 404, 413, 415, 429)
    ),
    "chats.cleanup": Operation("cleanupChats", body=seed.CleanupRequest, errors=(400, 401, 413, 415, 429)),
    "files.upload": Operation(
        "uploadFile",
        "The seed's upload: a file to Qwen's storage",
        body=seed.UploadForm,
        multipart=True,
        errors=(400, 401, 413, 415, 429, 502, 503),
    ),
    "files.sts_token": Operation(
        "stsToken",
        "The seed's STS token for a direct upload",
        body=seed.StsTokenRequest,
        errors=(400, 401, 413, 415, 429, 502, 503),
    ),
    "files.list_files": Operation(
        "listFiles",
        "OpenAI file list",
        query=openai.ListFilesQuery,
        ok=_ok(_obj("data", data={"type": "array"})),
        errors=(400, 401, 429),
    ),
    "files.create_file": Operation(
        "createFile",
        "OpenAI file upload",
        body=openai.CreateFileForm,
        multipart=True,
        ok=_ok(FILE_OBJECT),
        errors=(400, 401, 413, 415, 429, 502, 503),
    ),
    "files.retrieve_file": Operation("retrieveFile", path=FILE_ID, ok=_ok(FILE_OBJECT), errors=(401, 404, 429)),
    "files.delete_file": Operation("deleteFile", path=FILE_ID, errors=(401, 404, 429)),
    "images.generations": Operation(
        "createImage",
        "OpenAI image generation (Qwen t2i)",
        body=openai.ImageRequest,
        ok=_ok(_obj("data")),
        errors=(400, 401, 413, 415, 429, 502, 503),
    ),
    "images.edits": Operation(
        "createImageEdit",
        "OpenAI image edit (Qwen image_edit): image files in `image`/`image[]`; JSON with image URLs too",
        body=media.ImageEditRequest,
        multipart=True,
        also_json=True,
        ok=_ok(_obj("data")),
        errors=(400, 401, 413, 415, 429, 502, 503),
    ),
    "videos.create": Operation(
        "createVideo",
        "OpenAI video generation (a Qwen t2v task): answers at once with a queued video",
        body=media.VideoRequest,
        multipart=True,
        also_json=True,
        ok=_ok(_ref(media.Video)),
        errors=VIDEO_ERRORS,
    ),
    "videos.list_videos": Operation(
        "listVideos", query=media.ListVideosQuery, ok=_ok(_ref(media.VideoList)), errors=(400, 401, 429)
    ),
    "videos.retrieve": Operation(
        "retrieveVideo",
        "Where a video stands (the upstream is asked when a poll is due; `openai-poll-after-ms` says when)",
        path=VIDEO_ID,
        ok=_ok(_ref(media.Video)),
        errors=(401, 404, 429),
    ),
    "videos.delete": Operation("deleteVideo", path=VIDEO_ID, errors=(401, 404, 429)),
    "videos.content": Operation(
        "retrieveVideoContent",
        "The finished video (streamed from the upstream's host, or a redirect with VIDEO_CONTENT=redirect)",
        path=VIDEO_ID,
        ok=_ok(BINARY, "The video", "video/mp4"),
        errors=(400, 401, 404, 409, 429, 502),
    ),
    "videos.generations": Operation(
        "videoGenerations",
        "Seed style: POST /v1/videos, the answer also has `task_id`",
        body=media.VideoRequest,
        ok=_ok(_ref(media.Video)),
        errors=VIDEO_ERRORS,
    ),
    "videos.task_status": Operation(
        "taskStatus",
        "Seed style: {task_id, task_status, progress, content, message, video}",
        path=VIDEO_ID,
        errors=(401, 404, 429),
    ),
    "dual_chat.gigachat": Operation(
        "gigachat",
        "Dual AI Chat: GigaChat",
        query=seed.GigaChatQuery,
        ok=_ok(_obj(response=STRING)),
        errors=DUAL_ERRORS,
    ),
    "dual_chat.qwen": Operation(
        "localQwen", "Dual AI Chat: the local Qwen2.5-Coder", query=seed.LocalQwenQuery, errors=DUAL_ERRORS
    ),
    "dual_chat.qwen_status": Operation("localQwenStatus", ok=_ok(_obj("available", "model_loaded", "status"))),
    "dual_chat.history": Operation("history", query=seed.HistoryQuery, ok=_ok(_obj("history")), errors=(401, 422, 429)),
    "health.live": Operation("live", public=True, errors=()),
    "health.ready": Operation("ready", public=True, errors=(), extra=NOT_READY),
    "health.health_summary": Operation("health", "Same as /health/ready", public=True, errors=(), extra=NOT_READY),
    "health.metrics": Operation(
        "metrics", public=True, errors=(), ok=_ok(STRING, "Prometheus text format", "text/plain")
    ),
    "health.status_page": Operation(
        "statusPage", public=True, errors=(), ok=_ok(STRING, "The status page", "text/html")
    ),
    "health.openapi": Operation("openapi", public=True, errors=()),
    "anthropic.messages": MESSAGES,
    "anthropic.messages_count_tokens": COUNT_TOKENS,
    "responses.create": Operation(
        "createResponse",
        "OpenAI Responses (Codex CLI), streamed as typed events or not; stored unless store is false",
        body=responses.ResponsesRequest,
        ok={"description": "OK", "content": {**_json(RESPONSE), "text/event-stream": {"schema": STRING}}},
        errors=(400, 401, 404, 413, 429, 502, 503),
    ),
    "responses.retrieve": Operation(
        "getResponse", "A stored response", path=RESPONSE_ID, ok=_ok(RESPONSE), errors=(401, 404, 429)
    ),
    "responses.delete": Operation(
        "deleteResponse",
        path=RESPONSE_ID,
        ok=_ok(_obj("id", "deleted", id=STRING, object=STRING, deleted={"type": "boolean"})),
        errors=(401, 404, 429),
    ),
    "responses.input_items": Operation(
        "listResponseInputItems",
        "A stored response's input items, newest first by default",
        path=RESPONSE_ID,
        query=responses.InputItemsQuery,
        ok=_ok(_obj("data", "has_more", object=STRING, data={"type": "array", "items": OBJECT})),
        errors=(400, 401, 404, 429),
    ),
}


def document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``app``'s routes."""
    order = list(OPERATIONS)
    rules = sorted(
        (r for r in app.url_map.iter_rules() if r.endpoint != "static"),
        key=lambda r: order.index(r.endpoint) if r.endpoint in OPERATIONS else len(order),
    )
    paths: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    models: list[type[BaseModel]] = [openai.Error, openai.ContentPart, openai.Message]
    for rule in rules:
        op = OPERATIONS.get(rule.endpoint) or Operation(rule.endpoint.replace(".", "_"))
        path = rule.rule
        for name, schema in op.path.items():
            path = path.replace(f"<{name}>", "{" + schema.get("name", name) + "}")
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
        if op.operation_id in used:  # one view under two paths: ids must stay unique
            op = replace(op, operation_id=op.operation_id + "_" + re.sub(r"\W+", "_", path).strip("_"))
        used.add(op.operation_id)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(op)
        models += [m for m in (op.body, op.query) if m is not None and m not in models]
    shapes = (openai.ChatCompletion, openai.TextCompletion, openai.ModelList, media.Video, media.VideoList)
    models += [m for m in shapes if m not in models]
    anthropic_error = _obj(
        "type",
        "error",
        type={"type": "string", "enum": ["error"]},
        error=_obj("type", "message", type={"type": "string", "enum": ANTHROPIC_TYPES}, message=STRING),
    )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "qwenproxy",
            "version": VERSION,
            "description": (
                "OpenAI-compatible gateway to Qwen web, GigaChat and a local Qwen2.5-Coder. Every error is "
                'OpenAI\'s {"error": {message, type, param, code}}, but on the Anthropic Messages routes '
                "(/v1/messages, also under /anthropic/v1), which answer and fail in Anthropic's shape "
                '{"type": "error", "error": {type, message}}. Paths under /api also answer under /api/v1 and /v1, '
                "and every path with a trailing slash too."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A key from Authorization.txt (only when that file has keys)",
                },
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same key, as Anthropic clients send it",
                },
            },
            "responses": {
                "Error": {"description": "An error in OpenAI's shape", "content": _json(_ref(openai.Error))},
                "AnthropicError": {"description": "An error in Anthropic's shape", "content": _json(anthropic_error)},
            },
            "schemas": _schemas(models),
        },
    }


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id}
    if op.summary:
        out["summary"] = op.summary
    parameters = [
        {"name": schema.get("name", name), "in": "path", "required": True, "schema": _without(schema, "name")}
        for name, schema in op.path.items()
    ]
    if op.query is not None:
        parameters += _query_parameters(op.query)
    parameters += [{"name": name, "in": "header", "required": False, "schema": STRING} for name in op.headers]
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        kinds = ["multipart/form-data"] if op.multipart else ["application/json"]
        if op.also_json:
            kinds.append("application/json")
        content = {kind: {"schema": _ref(op.body)} for kind in kinds}
        out["requestBody"] = {"required": op.body_required, "content": content}
    if op.public:
        out["security"] = [{}]
    elif op.security is not None:
        out["security"] = op.security
    out["responses"] = {
        "200": op.ok,
        **op.extra,
        **{str(c): {"$ref": f"#/components/responses/{op.error_shape}"} for c in op.errors},
    }
    return out


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = to_openapi(model.model_json_schema())
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _without(prop, "nullable", "default")}
        for name, prop in schema.get("properties", {}).items()
    ]


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            out.setdefault(name, to_openapi(sub))
        out[model.__name__] = to_openapi(schema)
    return out


def _without(schema: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in keys}


def to_openapi(node: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema as OpenAPI 3.0 wants it: ``nullable`` instead
    of a ``null`` branch, boolean ``exclusiveMinimum``, no titles; ``x-ref`` (a reference from
    a schema written by hand, ``wire.openai.schema_ref``) becomes ``$ref``."""
    if isinstance(node, list):
        return [to_openapi(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "x-ref" in node:
        return {"$ref": REF.format(model=node["x-ref"])}
    out = {k: to_openapi(v) for k, v in node.items() if k not in ("title", "const")}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "exclusiveMinimum" in out and not isinstance(out["exclusiveMinimum"], bool):
        out["minimum"], out["exclusiveMinimum"] = out["exclusiveMinimum"], True
    branches = out.get("anyOf")
    if isinstance(branches, list) and {"type": "null"} in branches:
        rest = [b for b in branches if b != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out = {**rest[0], **out}
        elif len(rest) == 1:
            out["allOf"] = rest
        else:
            out["anyOf"] = rest
        out["nullable"] = True
    if out.get("default", 0) is None:
        del out["default"]
    if "$ref" in out and len(out) > 1:  # OpenAPI 3.0 ignores a $ref's siblings
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out
