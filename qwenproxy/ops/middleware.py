"""WSGI-level concerns: path normalisation (seed §7.0), request ids, logging context."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, g, has_request_context, request

from ..errors import Forbidden
from . import logs
from .cors import Cors

_VERSION_SEGMENT = re.compile(r"/v[12](?=/|$)")


def normalize_path(path: str) -> str:
    """``/v1/x`` → ``/api/x``; inside ``/api`` every ``v1``/``v2`` segment is dropped; a
    trailing slash is dropped everywhere (no route ends with one).

    So ``base_url=".../api"``, ``".../api/v1"`` and ``".../v1"`` all reach the same routes, and
    ``/api/chat/`` (the seed's own example) is ``/api/chat``: a rewrite, never a redirect, so a
    POST keeps its body.
    """
    if path == "/v1" or path.startswith("/v1/"):
        path = "/api" + path[3:]
    if path == "/api" or path.startswith("/api/"):
        path = _VERSION_SEGMENT.sub("", path)
        path = re.sub(r"/{2,}", "/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
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


def configure_logging(level: str, logs_dir: str | None = None) -> None:
    """Root logging: the console and ``LOGS_DIR/qwenproxy.log``, request id on every line,
    credentials scrubbed (``logs.redact``)."""
    root = logging.getLogger()
    if not any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(logs.RedactingFormatter(logs.FORMAT))
        root.addHandler(handler)
    if logs_dir and not logs.has_file_handler(root, Path(logs_dir) / "qwenproxy.log"):
        for old in [h for h in root.handlers if getattr(h, "qwenproxy_file", False)]:
            root.removeHandler(old)  # one app per process: its LOGS_DIR replaces an earlier one
            old.close()
        handler = logs.file_handler(logs_dir, "qwenproxy.log")
        handler.addFilter(RequestIdFilter())
        handler.qwenproxy_file = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())


def keys_configured(app: Flask) -> bool:
    """Whether client API keys are configured now (the keys file is re-read when it changes)."""
    keys = app.extensions.get("api_keys")
    return bool(keys is not None and keys.keys())


def init_app(app: Flask) -> None:
    app.wsgi_app = PathNormalizer(app.wsgi_app)  # type: ignore[method-assign]

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", given) else uuid.uuid4().hex

    cors = Cors(app.config.get("CORS_ORIGINS"), lambda: keys_configured(app))
    app.extensions["cors"] = cors

    @app.before_request
    def _preflight():  # type: ignore[no-untyped-def]
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return cors.preflight(request.headers)
        if cors.foreign(request.headers.get("Origin"), request.host):
            g.rejected = "cross_origin"
            raise Forbidden(
                "Requests from web pages of other origins are refused; name the origin in CORS_ORIGINS "
                "to allow it (docs/OPERATIONS.md)",
                code="cross_origin_forbidden",
            )
        return None

    @app.after_request
    def _headers(response):  # type: ignore[no-untyped-def]
        response.headers["X-Request-Id"] = getattr(g, "request_id", "")
        cors.apply(request.headers.get("Origin"), response.headers)
        return response
