"""``python app.py``: one process, gevent's WSGI server (also where gunicorn does not run).

The same as gunicorn on one process: the configured workers (browser pool, local model) are
started and supervised here; SIGTERM marks the app draining (``/health/ready`` -> 503), stops
accepting and lets running streams finish for up to ``GRACEFUL_TIMEOUT`` seconds; an idle
keep-alive connection is closed after ``KEEPALIVE`` seconds, as gunicorn does, and responses say
so (``Keep-Alive: timeout=N``).
"""

from __future__ import annotations

import logging
import signal

from flask import Flask

log = logging.getLogger(__name__)


def main(app: Flask) -> None:
    import gevent
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIHandler, WSGIServer

    from ..accounts.menu import run_menu, should_show
    from ..ops.exposure import banner, exposure_warning
    from ..ops.lifecycle import start_draining
    from ..ops.middleware import keys_configured
    from ..serving.live import end_before
    from .keepalive import header as keepalive_header
    from .supervisor import start_configured

    if should_show(app.config):  # the seed's account menu; never under gunicorn or Docker
        try:
            run_menu(app)
        except (KeyboardInterrupt, EOFError):
            return
    host, port = app.config["HOST"], int(app.config["PORT"])
    graceful = float(app.config.get("GRACEFUL_TIMEOUT", 30))
    keepalive = float(app.config.get("KEEPALIVE", 5))

    class Handler(WSGIHandler):
        def read_requestline(self):  # type: ignore[no-untyped-def]
            with gevent.Timeout(keepalive, False):  # waiting for the next request on a connection
                return super().read_requestline()
            return None  # timed out: the connection is closed

        def start_response(self, status, headers, exc_info=None):  # type: ignore[no-untyped-def]
            write = super().start_response(status, headers, exc_info)
            if not self.close_connection:  # say how long the connection stays open when idle
                self.response_headers.append((b"Keep-Alive", keepalive_header(keepalive).encode("latin-1")))
            return write

    # a pool, so that stopping waits for the running handlers (streams) instead of dropping them
    server = WSGIServer((host, port), app, log=None, spawn=Pool(int(app.config["WORKER_CONNECTIONS"])))
    server.handler_class = Handler

    def _stop(*_: object) -> None:
        log.info("stopping: finishing running streams (up to %s s)", graceful)
        start_draining(app)
        # what is still running shortly before the deadline is ended in-band and saved
        end_before(app.extensions["live_turns"], graceful)
        server.close()  # serve_forever() then waits up to `graceful` for the handlers

    try:
        gevent.signal_handler(signal.SIGTERM, _stop)
    except Exception:  # Windows has no SIGTERM watcher: Ctrl+C only (it waits for the streams too)
        pass
    supervisor = start_configured(app.config)
    log.info("qwenproxy listening on http://%s:%s/api", host, port)
    warning = exposure_warning([host], keys_configured(app))
    if warning:
        log.warning(banner(warning))
    try:
        server.serve_forever(stop_timeout=graceful)
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor is not None:
            supervisor.stop(timeout=max(float(app.config["BROWSER_DRAIN_TIMEOUT"]), graceful / 2) + 10)
