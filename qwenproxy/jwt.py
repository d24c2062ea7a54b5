"""JWTs read without verifying them: the gateway only needs their claims (expiry, user id).

Upstream checks the signature; we only route by ``exp`` (expiry) and ``id`` (the Qwen user).
"""

from __future__ import annotations

import base64
import json
from typing import Any


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT as a dict (empty when it cannot be read)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, TypeError, AttributeError):  # binascii.Error is a ValueError
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (unix seconds) of a JWT, read without verifying it."""
    exp = jwt_claims(token).get("exp")
    try:
        return float(exp) if exp is not None else None
    except (TypeError, ValueError):
        return None


def jwt_user_id(token: str) -> str | None:
    """The ``id`` claim of a Qwen JWT (spec §2.3): the Qwen user, owner of uploaded files."""
    value = jwt_claims(token).get("id")
    return str(value) if value else None
