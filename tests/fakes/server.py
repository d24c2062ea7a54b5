"""Serving a fake upstream (or the app) from a daemon thread on 127.0.0.1."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    """Werkzeug's handler without the per-request access log."""

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


class BackgroundServer:
    """A threaded werkzeug server: responses stream as they are written."""

    def __init__(self, wsgi: Any, *, port: int = 0, name: str = "fake") -> None:
        self._server = make_server("127.0.0.1", port, wsgi, threaded=True, request_handler=QuietHandler)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
