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
