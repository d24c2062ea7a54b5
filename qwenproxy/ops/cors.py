"""CORS for browser clients (``CORS_ORIGINS``)."""

from __future__ import annotations

from typing import Any

from flask import Response


class Cors:
    """CORS for browser clients: ``CORS_ORIGINS`` is ``*``, a comma-separated list, or empty."""

    METHODS = "GET, POST, PUT, DELETE, OPTIONS"
    HEADERS = (
        "Origin, X-Requested-With, Content-Type, Accept, Authorization, X-Request-Id, "
        "x-api-key, anthropic-version, anthropic-beta"
    )
    EXPOSE = (
        "X-Request-Id, X-Chat-Id, X-Parent-Id, Retry-After, X-RateLimit-Limit-Requests, X-RateLimit-Remaining-Requests"
    )

    def __init__(self, setting: str | None) -> None:
        origins = [o.strip().rstrip("/") for o in str(setting or "").split(",") if o.strip()]
        self.any = "*" in origins
        self.origins = set(origins) - {"*"}

    def allowed(self, origin: str | None) -> str | None:
        """The value of ``Access-Control-Allow-Origin`` for this origin, or None."""
        if self.any:
            return "*"
        if origin and origin.rstrip("/") in self.origins:
            return origin
        return None

    def apply(self, origin: str | None, headers: Any) -> None:
        if not self.any:
            headers.add("Vary", "Origin")
        allow = self.allowed(origin)
        if allow is None:
            return
        headers["Access-Control-Allow-Origin"] = allow
        headers.setdefault("Access-Control-Expose-Headers", self.EXPOSE)

    def preflight(self, request_headers: Any) -> Response:
        """``204`` with what the browser asked for, when its origin is allowed (else no CORS headers)."""
        response = Response(status=204)
        if self.allowed(request_headers.get("Origin")) is not None:
            response.headers["Access-Control-Allow-Methods"] = self.METHODS
            asked = request_headers.get("Access-Control-Request-Headers")
            response.headers["Access-Control-Allow-Headers"] = asked or self.HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response
