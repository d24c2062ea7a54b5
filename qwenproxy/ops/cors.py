"""CORS for browser clients (``CORS_ORIGINS``), and refusing requests from foreign pages.

``CORS_ORIGINS`` is ``*``, a comma-separated list of origins, or empty (none). Unset, it
follows the API keys: ``*`` when keys are configured (a page then needs a key anyway, as with
OpenAI-style APIs), no origin at all without keys, so that a web page the user visits cannot
read chats or spend the accounts of a gateway that trusts everyone who reaches it.

A request that carries an ``Origin`` (browsers add it to cross-origin requests and to every
POST) from an origin that is not allowed is refused with 403 before it does anything, so even
requests a browser sends without a preflight (an upload form, a GET) have no effect. The
gateway's own origin is always allowed; without keys only when it is reached by an IP address
or ``localhost``, because a page on a DNS name the attacker controls can point that name at
127.0.0.1 (DNS rebinding) and then look like the gateway's own origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Response


def _no_keys() -> bool:
    return False


class Cors:
    """The CORS policy: which browser origins may call the API."""

    METHODS = "GET, POST, PUT, DELETE, OPTIONS"
    HEADERS = (
        "Origin, X-Requested-With, Content-Type, Accept, Authorization, X-Request-Id, "
        "x-api-key, anthropic-version, anthropic-beta"
    )
    EXPOSE = (
        "X-Request-Id, X-Chat-Id, X-Parent-Id, Retry-After, X-RateLimit-Limit-Requests, X-RateLimit-Remaining-Requests"
    )

    def __init__(self, setting: str | None, keys_configured: Callable[[], bool] = _no_keys) -> None:
        self.follows_keys = setting is None  # unset: "*" with keys, none without
        origins = [o.strip().rstrip("/") for o in str(setting or "").split(",") if o.strip()]
        self._any = "*" in origins
        self.origins = {o.lower() for o in origins} - {"*"}
        self.keys_configured = keys_configured

    @property
    def any(self) -> bool:
        """Whether every origin is allowed now."""
        return self.keys_configured() if self.follows_keys else self._any

    def allowed(self, origin: str | None) -> str | None:
        """The value of ``Access-Control-Allow-Origin`` for this origin, or None."""
        if self.any:
            return "*"
        if origin and origin.rstrip("/").lower() in self.origins:
            return origin
        return None

    def foreign(self, origin: str | None, host: str) -> bool:
        """Whether a request with this ``Origin`` header, sent to ``host``, comes from a web
        page that may not use the gateway (module docstring)."""
        if not origin or self.allowed(origin) is not None:
            return False
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return True  # "null" (sandboxed frames, file: pages) and anything odd
        if parts.netloc.lower() != host.lower():
            return True
        return not (self.keys_configured() or _literal_or_localhost(parts.hostname or ""))

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


def _literal_or_localhost(hostname: str) -> bool:
    """An IP address or ``localhost``: names no web page can re-point at this machine."""
    name = hostname.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
