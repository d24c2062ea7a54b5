"""The seed's own JSON shapes: compact UTF-8 bodies as its FastAPI wrote them, FastAPI-style 422s."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

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
