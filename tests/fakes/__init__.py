"""Fake upstreams for the tests, served over real HTTP on loopback.

Every token, key and password a fake hands out is registered in ``ISSUED_SECRETS``; at the
end of the suite ``tests/conftest.py`` greps every log the gateway wrote for them.
"""

from __future__ import annotations

ISSUED_SECRETS: set[str] = set()


def issued(secret: str) -> str:
    """Remember ``secret`` as one that must never appear in a log; returns it."""
    if secret:
        ISSUED_SECRETS.add(secret)
    return secret


def sent_token(headers: dict[str, str]) -> str | None:
    """The account token a recorded request carried: the ``token`` cookie (how the 2026 front
    end authenticates) or an ``Authorization: Bearer`` header."""
    cookies = headers.get("cookie") or ""
    for part in cookies.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "token" and value:
            return value
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
