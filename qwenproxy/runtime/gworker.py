"""gunicorn's gevent worker, with what the gateway needs from it (``worker_class`` in
gunicorn.conf.py).

- SIGTERM: the app is marked draining (``/health/ready`` -> 503), the listening sockets close
  at once (gunicorn's own loop notices only within a second, accepting meanwhile), and the
  answers still running are ended in-band shortly before ``graceful_timeout`` runs out
  (``serving.live``), instead of being cut by the master's SIGKILL.
- Requests gunicorn refuses itself (a request line or headers over its limits, a malformed
  request) are answered in OpenAI's JSON error shape, not gunicorn's HTML page.
- The response head goes out with the first body bytes, and the chunked terminator with
  whatever is still held (``OneSendResponse``): gunicorn sends the head apart, one more
  syscall per response and one more wake-up of the client.
"""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
import gunicorn.util
from gunicorn.http import wsgi
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error`` with an OpenAI error body instead of an HTML page."""
    body = json.dumps(
        {
            "error": {
                "message": mesg or reason,
                "type": "invalid_request_error" if status_int < 500 else "server_error",
                "param": None,
                "code": ERROR_CODES.get(status_int, str(status_int)),
            }
        }
    ).encode("ascii")  # ensure_ascii: the message may quote bytes of a broken request
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    gunicorn.util.write_nonblock(sock, head + body)


class OneSendResponse(wsgi.Response):
    """gunicorn's HTTP/1.1 response, its head held until the first body bytes (or the end)."""

    _head: bytes | None = None
    _direct = False  # sendfile writes to the socket itself: the head goes at once then

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        self._head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True
        if self._direct:
            self.sock.sendall(self._take_head())

    def _take_head(self) -> bytes:
        head, self._head = self._head or b"", None
        return head

    def _emit_body(self, data: bytes) -> None:
        if self.chunked:
            data = b"%X\r\n%b\r\n" % (len(data), data)
        self.sock.sendall(self._take_head() + data)

    def sendfile(self, respiter: Any) -> bool:
        self._direct = True
        if self._head:
            self.sock.sendall(self._take_head())
        return super().sendfile(respiter)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        data = self._take_head() + (b"0\r\n\r\n" if self.chunked else b"")
        if data:
            self.sock.sendall(data)


class GatewayWorker(GeventWorker):
    """``worker_class = "qwenproxy.runtime.gworker.GatewayWorker"``."""

    def init_process(self) -> None:
        gunicorn.util.write_error = write_json_error  # this worker process only
        wsgi.Response = OneSendResponse  # what wsgi.create builds for HTTP/1.x, here only
        self._servers: list[Any] = []
        super().init_process()

    def run(self) -> None:
        # gunicorn keeps its servers in a local variable; record them to close them on SIGTERM
        servers = self._servers
        base = ggevent.StreamServer

        class RecordedServer(base):  # type: ignore[misc, valid-type]
            def start(self) -> None:
                super().start()
                servers.append(self)

        ggevent.StreamServer = RecordedServer
        try:
            super().run()
        finally:
            ggevent.StreamServer = base

    def handle_exit(self, sig: int, frame: Any) -> None:
        from ..ops.lifecycle import start_draining

        if not self.alive:
            return  # a second SIGTERM changes nothing
        super().handle_exit(sig, frame)
        start_draining(self.wsgi)
        # the rest may block (it starts a timer): not in the signal handler, which can run
        # inside the hub, where blocking is impossible
        gevent.spawn(self._shut_down, time.monotonic())

    def _shut_down(self, received: float) -> None:
        from ..serving.live import end_before

        for server in self._servers:
            server.close()  # gunicorn closes them again later: a no-op then
        end_before(self.wsgi.extensions["live_turns"], float(self.cfg.graceful_timeout), received)
