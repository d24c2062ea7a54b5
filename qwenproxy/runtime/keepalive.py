"""``Keep-Alive: timeout=N`` on every response whose connection stays open, under gunicorn.

An idle client connection stays open ``KEEPALIVE`` seconds. Clients that keep sockets in a pool
should learn how long: Node's fetch (undici) keeps one 4 s unless the server says, and then
reuses it only until shortly before the server's timeout, so it never writes to a socket the
server is closing ("other side closed"). gunicorn drops the hop-by-hop headers an application
sets (PEP 3333 forbids them), so the hint is added where gunicorn writes its own ``Connection``
header. ``python app.py`` (gevent's server) adds it in its handler (``runtime/serve.py``).
"""

from __future__ import annotations

from typing import Any


def header(seconds: float) -> str:
    return f"timeout={int(seconds)}"


def announce_under_gunicorn(seconds: float) -> None:
    """Make gunicorn's responses that keep the connection open say for how long (idempotent)."""
    if seconds <= 0:
        return
    from gunicorn.http import wsgi

    own = getattr(wsgi.Response.default_headers, "__wrapped__", wsgi.Response.default_headers)
    line = f"Keep-Alive: {header(seconds)}\r\n"

    def default_headers(self: Any) -> list[str]:
        headers = own(self)
        if "Connection: keep-alive\r\n" in headers:
            headers.append(line)
        return headers

    default_headers.__wrapped__ = own  # type: ignore[attr-defined]
    wsgi.Response.default_headers = default_headers  # type: ignore[method-assign]
