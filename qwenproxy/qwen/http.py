"""A lean HTTP/1.1 client for the upstream: pooled ``http.client`` connections per host.

Why not ``requests``: on the gateway's hot path it cost more CPU than everything else the
gateway does with a turn (preparing and merging settings, header dicts, URL parsing on each
call). This client does one thing: send a request on a kept-alive connection and hand the
body over as it arrives.

- One pool of idle connections per (scheme, host, port), newest first; a connection goes back
  only when its response was read to the end. An SSE reader stops at the ``finished`` event,
  so ``release`` reads the rest of the body (the chunked terminator) when it is there already,
  else in the background for at most ``drain_timeout`` seconds; a server that keeps the body
  open after ``finished`` (the 2026 site may) has its connection closed instead.
- A reused connection that the server closed while idle is detected before use (readable
  socket) or, failing that, retried once on a fresh connection before any response byte.
- Proxies and CA bundles from the environment, read once per host, as ``requests`` does:
  ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY`` (an ``http://`` proxy; CONNECT for
  https targets) and ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``/``SSL_CERT_FILE`` (else certifi).
  Anything this client cannot do itself (a SOCKS or https:// proxy) is reported by
  ``supported`` so the transport can fall back to ``requests``.
- Plain sockets: under gevent's monkey patching every wait is cooperative.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

DRAIN_LIMIT = 64 * 1024  # bytes read after the consumer stopped, before giving up on reuse
IDLE_MAX = 50.0  # seconds an idle connection is kept (servers commonly drop them after 60-75 s)
MAX_IDLE = 64  # idle connections kept per host
_RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


_HEADER_NAME = re.compile(r"[^:\s][^:\r\n]*")  # http.client's own check of a name


def header_block(pairs: Iterable[tuple[str, str]]) -> bytes:
    """The header lines of a request, checked and encoded at once (``putheader`` encodes and
    checks each name and value with two regular expressions: most of sending a request).
    A value that would start a line of its own is refused (no header injection)."""
    lines = []
    for name, given in pairs:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"Invalid header name {name!r}")
        value = str(given)
        if "\r" in value or "\n" in value or "\x00" in value:
            raise ValueError(f"Invalid value for header {name!r}")
        lines.append(f"{name}: {value}")
    return "\r\n".join(lines).encode("latin-1")


class _OneSend:
    """The request head and a small body in one ``send`` (``http.client`` sends them apart:
    two syscalls, and on the other side two wake-ups, per request)."""

    def put_block(self, block: bytes) -> None:
        """Header lines from ``header_block``, after ``putrequest``."""
        if block:
            self._buffer.append(block)  # type: ignore[attr-defined]

    def _send_output(self, message_body: Any = None, encode_chunked: bool = False) -> None:
        if isinstance(message_body, bytes) and len(message_body) <= 65536:
            self._buffer.extend((b"", b""))  # type: ignore[attr-defined]
            head = b"\r\n".join(self._buffer)  # type: ignore[attr-defined]
            del self._buffer[:]  # type: ignore[attr-defined]
            self.send(head + message_body)  # type: ignore[attr-defined]
            return
        super()._send_output(message_body, encode_chunked)  # type: ignore[misc]


class _HTTPConnection(_OneSend, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_OneSend, http.client.HTTPSConnection):
    pass


class Unreachable(Exception):
    """The request could not be sent or no response head came back."""


class BrokenBody(Exception):
    """The body broke off (connection reset, bad chunking, read timeout)."""


class TimedOut(Unreachable, BrokenBody):
    """Nothing arrived for the read timeout (before the head or inside the body)."""


@dataclass(frozen=True)
class Route:
    """How to reach one upstream origin: directly or through an HTTP proxy."""

    scheme: str
    host: str
    port: int
    proxy: tuple[str, int] | None = None
    proxy_auth: str | None = None  # "Basic …" for Proxy-Authorization
    context: ssl.SSLContext | None = None
    supported: bool = True  # False: a proxy kind this client cannot speak (socks, https://)


def _ca_bundle() -> str | None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        import certifi

        return certifi.where()
    except ImportError:  # the system store then
        return None


def _ssl_context() -> ssl.SSLContext:
    bundle = _ca_bundle()
    if bundle and os.path.isdir(bundle):
        context = ssl.create_default_context(capath=bundle)
    else:
        context = ssl.create_default_context(cafile=bundle)
    context.set_alpn_protocols(["http/1.1"])
    return context


def route_for(url: str) -> Route:
    """The route to ``url``'s origin, with the environment's proxy and CA settings."""
    from requests.utils import get_environ_proxies, select_proxy

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname or ""
    context = _ssl_context() if scheme == "https" else None
    proxy_url = select_proxy(url, get_environ_proxies(url, no_proxy=None))
    if not proxy_url:
        return Route(scheme, host, port, context=context)
    if "://" not in proxy_url:
        proxy_url = "http://" + proxy_url
    proxy = urlsplit(proxy_url)
    if proxy.scheme.lower() != "http" or not proxy.hostname:
        return Route(scheme, host, port, context=context, supported=False)
    auth = None
    if proxy.username:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("latin-1")).decode("ascii")
    return Route(scheme, host, port, (proxy.hostname, proxy.port or 80), auth, context)


def _poll_now() -> Any:
    """``select.select`` as the C library has it: gevent's cooperative one yields to the hub
    even with a zero timeout, which an instant check does not need."""
    try:
        from gevent import monkey

        return monkey.get_original("select", "select")
    except ImportError:
        return select.select


_select_now = _poll_now()


def _dropped(sock: socket.socket | None) -> bool:
    """Whether an idle connection was closed by the server (EOF or junk is readable)."""
    if sock is None:
        return True
    try:
        readable, _, _ = _select_now([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _complete(response: http.client.HTTPResponse) -> bool:
    """Whether the whole body was read (``read1`` does not close a Content-Length body)."""
    return response.isclosed() or (not response.chunked and response.length == 0)


def _close(conn: http.client.HTTPConnection) -> None:
    try:
        conn.close()
    except Exception:
        pass


class HostPool:
    """Idle kept-alive connections to one origin, newest first."""

    def __init__(self, route: Route, connect_timeout: float) -> None:
        self.route = route
        self.connect_timeout = connect_timeout
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self.opened = 0  # connections opened so far (tests and /api/status)

    def checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was reused."""
        now = time.monotonic()
        while True:
            with self._lock:
                if not self._idle:
                    break
                since, conn = self._idle.pop()
            if now - since < IDLE_MAX and not _dropped(conn.sock):
                return conn, True
            _close(conn)
        return self._connect(), False

    def _connect(self) -> http.client.HTTPConnection:
        r = self.route
        host, port = r.proxy or (r.host, r.port)
        if r.scheme == "https":
            conn: http.client.HTTPConnection = _HTTPSConnection(
                host, port, timeout=self.connect_timeout, context=r.context
            )
            if r.proxy:
                headers = {"Proxy-Authorization": r.proxy_auth} if r.proxy_auth else None
                conn.set_tunnel(r.host, r.port, headers=headers)
        else:
            conn = _HTTPConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:
            _close(conn)
            raise Unreachable(type(exc).__name__) from exc
        self.opened += 1
        return conn

    def checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append((time.monotonic(), conn))
                return
        _close(conn)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            _close(conn)


class PooledResponse:
    """A response head with its body still on the connection; see ``release`` and ``abort``."""

    def __init__(
        self,
        pool: HostPool,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        drain_timeout: float,
    ) -> None:
        self._pool = pool
        self._conn: http.client.HTTPConnection | None = conn
        self._response = response
        self._drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self.aborted = False
        self.status = response.status
        self.headers = response.msg
        encoding = (response.getheader("content-encoding") or "").strip().lower()
        # gzip, or deflate with or without its zlib header: what requests decoded for us
        self._decoder = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in ("gzip", "deflate") else None

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def iter_bytes(self) -> Iterator[bytes]:
        """Body pieces as the socket yields them; gives the connection back at the end."""
        response = self._response
        try:
            while True:
                data = response.read1(65536)
                if not data:
                    if self.aborted:
                        raise BrokenBody("aborted")
                    break
                if self._decoder is not None:
                    data = self._decoder.decompress(data)
                    if not data:
                        continue
                yield data
            if self._decoder is not None and (tail := self._decoder.flush()):
                yield tail
        except (OSError, ValueError, http.client.HTTPException, zlib.error) as exc:
            timed_out = isinstance(exc, TimeoutError) and not self.aborted
            reason = "aborted" if self.aborted else type(exc).__name__
            self.abort()
            if timed_out:
                raise TimedOut(reason) from exc
            raise BrokenBody(reason) from exc
        finally:
            self.release()

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    def release(self) -> None:
        """Done reading: the connection goes back to the pool if the body ends (now, or
        within ``drain_timeout`` in the background), else it is closed."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        response = self._response
        if _complete(response):
            self._checkin(conn)
            return
        if response.will_close:
            _close(conn)
            return
        if self._ready(conn):  # usually the chunked terminator, already here
            self._drain(conn, min(0.05, self._drain_timeout))
            return
        with self._lock:  # ``abort`` may still stop the background drain
            self._conn = conn
        threading.Thread(target=self._drain_later, daemon=True, name="upstream-drain").start()

    def _drain_later(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._drain(conn, self._drain_timeout)

    def _ready(self, conn: http.client.HTTPConnection) -> bool:
        """Whether body bytes are buffered or on the socket, without waiting for any."""
        sock, fp = conn.sock, self._response.fp
        if sock is None or fp is None:
            return False
        try:
            sock.settimeout(0.0)
            try:
                return bool(fp.peek(1))
            finally:
                sock.settimeout(self._drain_timeout)
        except (OSError, ValueError):
            return False

    def _drain(self, conn: http.client.HTTPConnection, timeout: float) -> None:
        response = self._response
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            left = DRAIN_LIMIT
            deadline = time.monotonic() + timeout
            while left > 0 and time.monotonic() < deadline:
                data = response.read1(min(left, 16384))
                if not data:
                    break
                left -= len(data)
        except (OSError, ValueError, http.client.HTTPException):
            pass
        if _complete(response):
            self._checkin(conn)
        else:
            _close(conn)

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        if self._response.will_close:
            _close(conn)
            return
        self._response.close()  # the response object only: the socket stays with the connection
        self._pool.checkin(conn)

    def abort(self) -> None:
        """Stop a read in progress (from any thread or greenlet); the connection is dropped."""
        with self._lock:
            if self._conn is not None:
                self.aborted = True
            conn, self._conn = self._conn, None
        if conn is None:
            return
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        _close(conn)


class HTTPClient:
    """Pooled HTTP/1.1 requests to any origin; one ``HostPool`` per origin."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 120.0, drain_timeout: float = 1.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.drain_timeout = drain_timeout
        self._pools: dict[tuple[str, str], HostPool] = {}
        self._lock = threading.Lock()

    def pool(self, url: str) -> HostPool:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    pool = HostPool(route_for(url), self.connect_timeout)
                    self._pools[key] = pool
        return pool

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> PooledResponse:
        """Send a request and return once the response head is in."""
        pool = self.pool(url)
        route = pool.route
        if json_body is not None and body is None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if route.proxy and route.scheme == "http":
            target = f"http://{parts.netloc}{target}"
        names = {k.lower() for k in headers}
        extra = [("Accept-Encoding", "gzip, deflate")] if "accept-encoding" not in names else []
        if "connection" not in names:
            extra.append(("Connection", "keep-alive"))
        if route.proxy and route.scheme == "http" and route.proxy_auth:
            extra.append(("Proxy-Authorization", route.proxy_auth))
        if body is not None:
            extra.append(("Content-Length", str(len(body))))
        block = header_block([*headers.items(), *extra])  # a bad header fails before any connection
        read_timeout = timeout or self.read_timeout
        for attempt in (0, 1):
            conn, reused = pool.checkout()
            try:
                conn.sock.settimeout(read_timeout)
                conn.putrequest(method, target, skip_accept_encoding=True)
                conn.put_block(block)  # type: ignore[attr-defined]
                conn.endheaders(body)
                response = conn.getresponse()
            except _RETRYABLE as exc:
                _close(conn)
                if reused and attempt == 0:
                    continue  # the server dropped the idle connection: once more on a new one
                raise Unreachable(type(exc).__name__) from exc
            except (OSError, http.client.HTTPException) as exc:
                _close(conn)
                if isinstance(exc, TimeoutError):
                    raise TimedOut(type(exc).__name__) from exc
                raise Unreachable(type(exc).__name__) from exc
            return PooledResponse(pool, conn, response, self.drain_timeout)
        raise Unreachable("retry")  # pragma: no cover - the loop returns or raises

    def opened(self) -> int:
        """TCP connections opened so far, all origins."""
        return sum(p.opened for p in list(self._pools.values()))

    def close(self) -> None:
        for pool in list(self._pools.values()):
            pool.close()
