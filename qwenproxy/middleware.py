"""WSGI-level concerns: path normalisation (seed §7.0), request ids, logging context."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, g, has_request_context, request

_VERSION_SEGMENT = re.compile(r"/v[12](?=/|$)")


def normalize_path(path: str) -> str:
    """``/v1/x`` → ``/api/x``; inside ``/api`` every ``v1``/``v2`` segment is dropped.

    So ``base_url=".../api"``, ``".../api/v1"`` and ``".../v1"`` all reach the same routes.
    """
    if path == "/v1" or path.startswith("/v1/"):
        path = "/api" + path[3:]
    if path == "/api" or path.startswith("/api/"):
        path = _VERSION_SEGMENT.sub("", path)
        path = re.sub(r"/{2,}", "/", path)
    return path


class PathNormalizer:
    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        environ["PATH_INFO"] = normalize_path(environ.get("PATH_INFO", "") or "/")
        return self.app(environ, start_response)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(g, "request_id", "-") if has_request_context() else "-"
        return True


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())


def init_app(app: Flask) -> None:
    app.wsgi_app = PathNormalizer(app.wsgi_app)  # type: ignore[method-assign]

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", given) else uuid.uuid4().hex

    @app.after_request
    def _headers(response):  # type: ignore[no-untyped-def]
        response.headers["X-Request-Id"] = getattr(g, "request_id", "")
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        response.headers.setdefault("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
        response.headers.setdefault(
            "Access-Control-Allow-Headers", "Origin, X-Requested-With, Content-Type, Accept, Authorization"
        )
        return response
