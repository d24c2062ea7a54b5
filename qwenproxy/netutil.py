"""Local HTTP plumbing: HTTP over Unix sockets, and aborting a streamed read.

The worker processes listen on Unix sockets; ``UnixHTTPConnection`` (plain ``http.client``,
the browser transport) and ``UnixSocketAdapter`` (``requests``, the local model provider)
both connect through ``unix_socket``. ``socket.socket`` is looked up at call time, so under
gevent the socket is cooperative.

Closing a response alone does not wake a read blocked elsewhere; shutting its socket down
does, and the peer sees the connection close (which is how upstreams and workers learn that
a client left).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from typing import Any
from urllib.parse import quote, unquote, urlparse

from requests.adapters import HTTPAdapter
from typing_extensions import override
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool


def shutdown(sock: Any) -> None:
    """``shutdown(SHUT_RDWR)`` on a socket that may be gone already."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def abort_response(response: Any) -> None:
    """Abort a streamed ``requests`` response, whichever thread is reading it."""
    raw = getattr(response, "raw", None)
    fp = getattr(raw, "_fp", None)  # http.client.HTTPResponse
    sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    shutdown(sock or getattr(getattr(raw, "_connection", None), "sock", None))
    try:
        response.close()
    except Exception:  # closing a half-read response may raise; it is closed all the same
        pass


# --------------------------------------------------------------------------- HTTP over a Unix socket


def unix_socket(path: str, timeout: float | None) -> socket.socket:
    """A stream socket connected to ``path`` (closed again if the connect fails)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if isinstance(timeout, (int, float)):  # else urllib3's "default timeout" sentinel
        sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` HTTP/1.1 over a Unix socket; ``host`` only fills the Host header."""

    def __init__(self, path: str, timeout: float, host: str = "localhost") -> None:
        super().__init__(host, timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = unix_socket(self._path, self.timeout)


class _UrllibUnixConnection(HTTPConnection):
    def __init__(self, *args: Any, socket_path: str = "", **kwargs: Any) -> None:
        self.socket_path = socket_path
        super().__init__(*args, **kwargs)

    def connect(self) -> None:
        self.sock = unix_socket(self.socket_path, self.timeout)


class _UnixPool(HTTPConnectionPool):
    ConnectionCls = _UrllibUnixConnection

    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:
        self.num_connections += 1
        return _UrllibUnixConnection(
            host="localhost", timeout=self.timeout.connect_timeout, socket_path=self.socket_path
        )


class UnixSocketAdapter(HTTPAdapter):
    """A ``requests`` adapter for ``http+unix://<quoted socket path>/route`` URLs (urllib3 1.26)."""

    def __init__(self) -> None:
        super().__init__()
        self._pools: dict[str, _UnixPool] = {}

    def _pool(self, url: str) -> _UnixPool:
        path = unquote(urlparse(url).netloc)
        pool = self._pools.get(path)
        if pool is None:
            pool = self._pools[path] = _UnixPool(path, maxsize=16)
        return pool

    @override
    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool(request.url)

    @override
    def get_connection(self, url, proxies=None):
        return self._pool(url)

    @override
    def request_url(self, request, proxies):
        return request.path_url

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        super().close()


def unix_base_url(url: str) -> str:
    """``unix:///run/w.sock`` -> ``http+unix://%2Frun%2Fw.sock``; HTTP URLs unchanged."""
    if url.startswith("unix:"):
        return "http+unix://" + quote(urlparse(url).path, safe="")
    return url.rstrip("/")
