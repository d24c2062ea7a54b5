"""The seed's own API: compact UTF-8 JSON as its FastAPI wrote it, FastAPI-style 422s, and the
shapes of its requests (Dual AI Chat, chats, files)."""

from __future__ import annotations

import json
from typing import Any, Literal

from flask import Response
from pydantic import BaseModel, Field

from ..errors import BadRequest


class ParamError(BadRequest):
    """A missing or malformed query parameter, rendered like FastAPI's 422."""

    status = 422

    def __init__(self, name: str, kind: str, msg: str, value: Any) -> None:
        super().__init__(f"Query parameter `{name}`: {msg}", param=name, code="invalid_params")
        self.detail = [{"type": kind, "loc": ["query", name], "msg": msg, "input": value}]


def seed_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON exactly as the seed's FastAPI wrote it: compact, UTF-8, no trailing newline."""
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    response = Response(body.encode("utf-8"), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


# --------------------------------------------------------------------------- request shapes
# The seed's routes check their parameters by hand (each with its seed-compatible error);
# these models describe the same shapes for the OpenAPI document.


class CreateChatRequest(BaseModel):
    """``POST /api/chats`` (the body is optional)."""

    name: str | None = None
    model: str | None = None


class RenameChatRequest(BaseModel):
    """``PUT /api/chats/{chatId}/rename``."""

    name: str = Field(min_length=1)


class CleanupRequest(BaseModel):
    """``POST /api/chats/cleanup``: which chats to delete (at least one filter, or ``all``)."""

    olderThan: float | None = Field(None, gt=0, description="milliseconds")
    userMessageCountLessThan: float | None = Field(None, ge=0)
    messageCountLessThan: float | None = Field(None, ge=0)
    maxChats: int | None = Field(None, ge=1)
    all: bool | None = None


class StsTokenRequest(BaseModel):
    """``POST /api/files/getstsToken``: the seed's STS token for a direct upload."""

    filename: str = Field(min_length=1, pattern=r"^[^/\\]+$")
    filesize: int = Field(ge=1)
    filetype: str = Field(min_length=1)


class UploadForm(BaseModel):
    """``POST /api/files/upload`` (multipart): the seed's upload."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class GigaChatQuery(BaseModel):
    """``GET /gigachat``."""

    query: str = Field(min_length=1)
    session_id: str = Field(min_length=1, max_length=200)
    stream: bool | None = None
    model: str | None = None


class LocalQwenQuery(BaseModel):
    """``GET /qwen`` (the local Qwen2.5-Coder)."""

    query: str = Field(min_length=1)
    session_id: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    add_bos: bool | None = None
    stream: bool | None = None


class HistoryQuery(BaseModel):
    """``GET /history``."""

    session_id: str = Field(min_length=1, max_length=200)
    bot: Literal["gigachat", "qwen"] | None = None
