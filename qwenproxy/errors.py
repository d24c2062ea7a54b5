"""Typed errors shared by providers and routes; one handler renders them as OpenAI errors.

Providers raise these (never Flask exceptions), so protocol code stays free of Flask and
routes never match on message text.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI ``{"error": {...}}`` body."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class UnsupportedMediaType(ApiError):
    """A body in a format the route does not take (a JSON route sent text/plain, a form)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Forbidden(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class AuthenticationError(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"


class UpstreamError(ApiError):
    """The upstream answered, but not with something we can use."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream stopped sending for longer than the read timeout."""

    status = 504
    type = "timeout"
    code = "upstream_timeout"


class ServerShutdown(ApiError):
    """This process is shutting down and ended the request before its deadline."""

    status = 503
    type = "service_unavailable"
    code = "server_shutdown"


class UpstreamUnavailable(UpstreamError):
    """The upstream (or a worker) could not be reached, or nothing can serve right now."""

    status = 503
    type = "service_unavailable"
    code = "upstream_unavailable"


class RateLimited(UpstreamError):
    """Quota exhausted; ``retry_after`` in seconds when known."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.setdefault("Retry-After", str(max(1, int(retry_after))))


class PaymentRequired(UpstreamError):
    """The upstream account is out of quota or tokens (GigaChat answers 402)."""

    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class Unauthorized(UpstreamError):
    """The upstream rejected our credentials (expired token, wrong key)."""

    status = 503
    type = "service_unavailable"
    code = "upstream_unauthorized"


class UpstreamBlocked(UpstreamError):
    """Anti-bot wall: slider captcha JSON or WAF HTML page."""

    status = 502
    code = "upstream_captcha"


class Conflict(ApiError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict:
    """The OpenAI error shape, for the few places that have no exception at hand."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
