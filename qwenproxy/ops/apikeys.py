"""Client API keys from a text file (seed ``Authorization.txt``), checked in constant time.

One key per line, ``#`` comments and blank lines ignored; a missing or empty file disables
auth. The file is re-read when it changes, so edits need no restart.
"""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

from flask import Flask, request

from ..errors import AuthenticationError

PUBLIC_PREFIXES = ("/health", "/metrics", "/static", "/api/openapi.json")


class ApiKeys:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._keys: list[bytes] = []

    def keys(self) -> list[bytes]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
        except OSError:
            return []
        with self._lock:
            if stamp != self._stamp:
                lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                self._keys = [
                    line.strip().encode() for line in lines if line.strip() and not line.strip().startswith("#")
                ]
                self._stamp = stamp
            return list(self._keys)

    def check(self, header: str | None) -> None:
        keys = self.keys()
        if not keys:
            return
        if not header or not header.startswith("Bearer "):
            raise AuthenticationError(
                "Authorization required: send `Authorization: Bearer <key>` or `x-api-key` (Требуется авторизация)"
            )
        given = header[len("Bearer ") :].strip().encode()
        match = False
        for key in keys:  # compare with every key: the time taken does not depend on which matched
            match |= hmac.compare_digest(given, key)
        if not match:
            raise AuthenticationError("Invalid API key (Недействительный токен)")


def init_app(app: Flask) -> None:
    keys = ApiKeys(app.config["API_KEYS_FILE"])
    app.extensions["api_keys"] = keys

    @app.before_request
    def _require_key() -> None:
        if request.method == "OPTIONS" or request.path == "/" or request.path.startswith(PUBLIC_PREFIXES):
            return
        keys.check(bearer())


def bearer() -> str | None:
    """The client's key as ``Bearer <key>``: ``Authorization``, or Anthropic's ``x-api-key``."""
    header = request.headers.get("Authorization")
    if header:
        return header
    key = request.headers.get("x-api-key", "").strip()
    return f"Bearer {key}" if key else None
