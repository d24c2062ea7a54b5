"""One handler renders every error as OpenAI's ``{"error": {...}}`` with a real status, or,
on the Anthropic Messages paths, as Anthropic's ``{"type": "error", "error": {...}}``."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import ApiError, error_body
from ..wire import anthropic
from .anthropic import PREFIXES as ANTHROPIC_PATHS

log = logging.getLogger(__name__)

HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _anthropic(err: ApiError) -> Response:
    response = jsonify(anthropic.error_body(err))
    response.status_code = anthropic.error_status(err)
    response.headers.update(err.headers)
    return response


def render(err: ApiError) -> Response:
    if request.path.startswith(ANTHROPIC_PATHS):
        return _anthropic(err)
    response = jsonify(err.to_dict())
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, render)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = exc.code or 500
        message = {404: "Unknown endpoint (Эндпоинт не найден)", 405: "Method not allowed"}.get(code, exc.description)
        if request.path.startswith(ANTHROPIC_PATHS):
            return _anthropic(ApiError(str(message), status=code))
        response = jsonify(error_body(str(message), "invalid_request_error", HTTP_TYPES.get(code, str(code))))
        response.status_code = code
        valid = getattr(exc, "valid_methods", None)
        if code == 405 and valid:
            response.headers["Allow"] = ", ".join(valid)
        return response

    @app.errorhandler(Exception)
    def _crash(_exc: Exception) -> Response:
        log.exception("unhandled error")
        if request.path.startswith(ANTHROPIC_PATHS):
            return _anthropic(ApiError("Internal server error", status=500))
        response = jsonify(
            error_body("Internal server error (Внутренняя ошибка сервера)", "server_error", "internal_error")
        )
        response.status_code = 500
        return response
