"""Serving a fake upstream (or the app) from a daemon thread on 127.0.0.1.

werkzeug's development handler sends ``Connection: close`` after every response. The real
upstreams (chat.qwen.ai behind its CDN) keep HTTP/1.1 connections alive, and the gateway's
client relies on that, so ``BackgroundServer(keep_alive=True)`` serves persistent
connections: a response without ``Content-Length`` is chunked, an unread request body is
drained before the next request line, and the server counts the connections it accepted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

# a request body left unread by the app is drained up to this many bytes, else the connection closes
_DRAIN_LIMIT = 1 << 20


class QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without the per-request access log."""

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class _Body:
    """``wsgi.input`` limited to ``Content-Length``; remembers what is left unread."""

    def __init__(self, raw: Any, length: int) -> None:
        self._raw = raw
        self.left = length

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self._raw.read(size)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data

    def readline(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self._raw.readline(size)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data

    def __iter__(self):
        while line := self.readline():
            yield line


class KeepAliveHandler(QuietHandler):
    """HTTP/1.1 persistent connections (see the module docstring); WSGI otherwise as werkzeug."""

    protocol_version = "HTTP/1.1"

    def run_wsgi(self) -> None:  # noqa: C901 - one request/response exchange, kept in one place
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        body: _Body | None = None
        if environ.get("wsgi.input_terminated"):  # a chunked request body: no reuse afterwards
            self.close_connection = True
        else:
            try:
                length = max(0, int(environ.get("CONTENT_LENGTH") or 0))
            except ValueError:
                length, self.close_connection = 0, True
            body = _Body(self.rfile, length)
            environ["wsgi.input"] = body
        state: dict[str, Any] = {"status": None, "headers": None, "sent": False, "chunked": False}

        def write(data: bytes) -> None:
            if not state["sent"]:
                state["sent"] = True
                code_str, _, msg = state["status"].partition(" ")
                code = int(code_str)
                self.send_response(code, msg)
                keys = set()
                for key, value in state["headers"]:
                    self.send_header(key, value)
                    keys.add(key.lower())
                no_body = environ["REQUEST_METHOD"] == "HEAD" or 100 <= code < 200 or code in (204, 304)
                if "content-length" not in keys and not no_body:
                    if self.request_version >= "HTTP/1.1":
                        state["chunked"] = True
                        self.send_header("Transfer-Encoding", "chunked")
                    else:
                        self.close_connection = True
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
            if data:
                if state["chunked"]:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                else:
                    self.wfile.write(data)
            self.wfile.flush()

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info and state["sent"]:
                raise exc_info[1].with_traceback(exc_info[2])
            state["status"], state["headers"] = status, headers
            return write

        iterable = None
        try:
            iterable = self.server.app(environ, start_response)
            for data in iterable:
                write(data)
            if not state["sent"]:
                write(b"")
            if state["chunked"]:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (ConnectionError, TimeoutError, OSError) as exc:
            self.close_connection = True
            self.connection_dropped(exc, environ)
        except Exception:
            self.close_connection = True
            if not state["sent"]:
                with contextlib.suppress(Exception):
                    state["status"], state["headers"] = "500 INTERNAL SERVER ERROR", [("Content-Length", "0")]
                    write(b"")
            raise
        finally:
            if iterable is not None and hasattr(iterable, "close"):
                iterable.close()
            if body is not None and body.left and not self.close_connection:
                if body.left > _DRAIN_LIMIT:
                    self.close_connection = True
                else:
                    with contextlib.suppress(OSError):
                        while body.read(65536):
                            pass


class _CountingServer:
    """Mixed into werkzeug's threaded server: counts accepted connections, can drop them all."""

    accepted = 0

    def track(self) -> None:
        self.accepted = 0
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.accepted += 1
            self.open.add(request)
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.open.discard(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def drop_all(self) -> None:
        with self.lock:
            sockets = list(self.open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class BackgroundServer:
    """A threaded werkzeug server: responses stream as they are written.

    ``keep_alive``: persistent HTTP/1.1 connections (module docstring); ``accepted`` counts
    the TCP connections accepted so far.
    """

    def __init__(self, wsgi: Any, *, port: int = 0, name: str = "fake", keep_alive: bool = False) -> None:
        handler = KeepAliveHandler if keep_alive else QuietHandler
        self._server = make_server("127.0.0.1", port, wsgi, threaded=True, request_handler=handler)
        # count and track connections on this instance only (werkzeug's class is shared)
        base = type(self._server)
        self._server.__class__ = type("Counting" + base.__name__, (_CountingServer, base), {})
        self._server.track()
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    @property
    def accepted(self) -> int:
        """TCP connections accepted since the start."""
        return self._server.accepted

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_all()  # idle keep-alive connections would otherwise stay open
        self._thread.join(timeout=5)
