"""Client API keys from a text file (seed ``Authorization.txt``), checked in constant time.

One key per line, ``#`` comments and blank lines ignored; a missing or empty file disables
auth. The file is re-read when it changes, so edits need no restart. When it is missing at
start, it is created holding a commented template that explains all this (seed 000 §2); an
existing file is never touched. With keys, the status page at ``/`` needs one too
(``STATUS_PAGE_PUBLIC=true`` opens it); a browser may give it as the password of its login
prompt (HTTP Basic). Refused requests are counted in the metrics and never written to the
request log, so that nobody without a key can fill it.
"""

from __future__ import annotations

import base64
import hmac
import logging
import secrets
import threading
from pathlib import Path

from flask import Flask, g, request

from ..errors import AuthenticationError

log = logging.getLogger(__name__)

PUBLIC_PREFIXES = ("/health", "/metrics", "/static", "/api/openapi.json")

TEMPLATE = """\
# qwenproxy: client API keys / ключи доступа клиентов (Authorization.txt)
#
# While this file has no key line, authentication is OFF: every request is served.
# Пока в файле нет ни одного ключа, авторизация ОТКЛЮЧЕНА: обслуживаются все запросы.
#
# One key per line. Blank lines and lines starting with # are ignored.
# Один ключ на строку. Пустые строки и строки, начинающиеся с #, игнорируются.
#
# Clients send a key in the Authorization header / клиенты передают ключ в заголовке:
#     Authorization: Bearer <key>
# openai SDK:  OpenAI(base_url="http://localhost:3264/api", api_key="<key>")
# curl:        curl -H "Authorization: Bearer <key>" http://localhost:3264/api/models
#
# The file is re-read when it changes: no restart needed.
# Файл перечитывается при изменении: перезапуск не нужен.
#
# A fresh random key; delete the "# " in front of it to require it:
# Новый случайный ключ; уберите "# " перед ним, чтобы включить авторизацию:
# {example}
"""


def ensure_template(path: str | Path) -> bool:
    """Create ``path`` with the commented template when it is missing (never overwriting it,
    even when several workers start at once); whether it was created."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as fh:  # O_EXCL: exactly one creator
            fh.write(TEMPLATE.format(example="sk-" + secrets.token_urlsafe(32)))
    except FileExistsError:
        return False
    except OSError as exc:
        log.warning("could not create the API key file %s: %s", path, exc)
        return False
    log.info("created %s: no keys yet, so authentication is off until a key line is added", path)
    return True


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

    def check(self, header: str | None, *, basic: bool = False) -> None:
        """Raise ``AuthenticationError`` unless ``header`` carries a configured key (always
        passes without keys). ``basic``: ``Basic base64(any-name:key)`` counts too, so that a
        browser's own login prompt opens the status page."""
        keys = self.keys()
        if not keys:
            return
        given = presented_key(header, basic=basic)
        if given is None:
            raise AuthenticationError(
                "Authorization required: send `Authorization: Bearer <key>` or `x-api-key` (Требуется авторизация)"
            )
        match = False
        for key in keys:  # compare with every key: the time taken does not depend on which matched
            match |= hmac.compare_digest(given, key)
        if not match:
            raise AuthenticationError("Invalid API key (Недействительный токен)")


def presented_key(header: str | None, *, basic: bool = False) -> bytes | None:
    """The key in an ``Authorization`` header; the scheme is case-insensitive (RFC 9110)."""
    scheme, _, credentials = (header or "").strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials.encode()
    if basic and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2].encode() or None
    return None


STATUS_REALM = 'Basic realm="qwenproxy status page (password: an API key)", charset="UTF-8"'


def init_app(app: Flask) -> None:
    if app.config.get("API_KEYS_FILE"):
        ensure_template(app.config["API_KEYS_FILE"])
    keys = ApiKeys(app.config["API_KEYS_FILE"])
    app.extensions["api_keys"] = keys
    status_public = bool(app.config.get("STATUS_PAGE_PUBLIC"))

    @app.before_request
    def _require_key() -> None:
        if request.method == "OPTIONS" or request.path.startswith(PUBLIC_PREFIXES):
            return
        status_page = request.path == "/"
        if status_page and status_public:
            return
        try:
            keys.check(bearer(), basic=status_page)
        except AuthenticationError as exc:
            g.rejected = "unauthenticated"  # counted in the metrics, not a row of the request log
            if status_page:  # a browser then asks for the key itself
                exc.headers["WWW-Authenticate"] = STATUS_REALM
            raise


def bearer() -> str | None:
    """The client's key as ``Authorization``: the header, or Anthropic's ``x-api-key`` as
    ``Bearer <key>``."""
    header = request.headers.get("Authorization")
    if header:
        return header
    key = request.headers.get("x-api-key", "").strip()
    return f"Bearer {key}" if key else None
