"""``python app.py``: one process, gevent's WSGI server (also where gunicorn does not run).

The same as gunicorn on one process: the configured workers (browser pool, local model) are
started and supervised here, SIGTERM marks the app draining (``/health/ready`` -> 503), stops
accepting and lets running streams finish for up to ``GRACEFUL_TIMEOUT`` seconds.
"""

from __future__ import annotations

import logging
import signal

from flask import Flask

log = logging.getLogger(__name__)


def main(app: Flask) -> None:
    from gevent.pywsgi import WSGIServer

    from .api.health import start_draining
    from .supervisor import start_configured

    host, port = app.config["HOST"], int(app.config["PORT"])
    server = WSGIServer((host, port), app, log=None)

    def _stop(*_: object) -> None:
        log.info("stopping: finishing running streams (up to %s s)", app.config.get("GRACEFUL_TIMEOUT"))
        start_draining(app)
        server.stop(timeout=float(app.config.get("GRACEFUL_TIMEOUT", 30)))

    try:  # gevent runs the handler in a greenlet of its own, where it may wait for the streams
        import gevent

        gevent.signal_handler(signal.SIGTERM, _stop)
    except (ValueError, AttributeError, NotImplementedError):  # Windows: Ctrl+C only
        pass
    supervisor = start_configured(app.config)
    log.info("qwenproxy listening on http://%s:%s/api", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        _stop()
    finally:
        if supervisor is not None:
            supervisor.stop(timeout=float(app.config.get("GRACEFUL_TIMEOUT", 30)) / 2 + 10)
