"""``python app.py``: one process, gevent's WSGI server (also where gunicorn does not run)."""

from __future__ import annotations

import logging
import signal

from flask import Flask

log = logging.getLogger(__name__)


def main(app: Flask) -> None:
    from gevent.pywsgi import WSGIServer

    host, port = app.config["HOST"], int(app.config["PORT"])
    server = WSGIServer((host, port), app, log=None)

    def _stop(*_: object) -> None:
        log.info("stopping")
        server.stop(timeout=float(app.config.get("GRACEFUL_TIMEOUT", 30)))

    try:
        signal.signal(signal.SIGTERM, _stop)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM (Windows)
        pass
    log.info("qwenproxy listening on http://%s:%s/api", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        _stop()
