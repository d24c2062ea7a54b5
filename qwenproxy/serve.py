"""``python app.py``: one process, gevent's WSGI server (also where gunicorn does not run)."""

from __future__ import annotations

import logging
import signal
from typing import Any

from flask import Flask

log = logging.getLogger(__name__)


def main(app: Flask) -> None:
    from gevent.pywsgi import WSGIServer

    from .menu import run_menu, should_show

    if should_show(app.config):  # the seed's account menu; never under gunicorn or Docker
        try:
            run_menu(app)
        except (KeyboardInterrupt, EOFError):
            return
    host, port = app.config["HOST"], int(app.config["PORT"])
    server = WSGIServer((host, port), app, log=None)

    def _stop(*_: object) -> None:
        log.info("stopping")
        server.stop(timeout=float(app.config.get("GRACEFUL_TIMEOUT", 30)))

    try:
        signal.signal(signal.SIGTERM, _stop)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM (Windows)
        pass
    supervisor = start_workers(app.config)
    log.info("qwenproxy listening on http://%s:%s/api", host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        _stop()
    finally:
        if supervisor is not None:
            supervisor.stop(timeout=float(app.config["BROWSER_DRAIN_TIMEOUT"]) + 10)


def start_workers(config: Any) -> Any:
    """The worker processes this configuration needs (browser pool, local model), supervised."""
    from workers.browser_pool import worker_spec as browser_pool_spec
    from workers.inference import worker_spec as local_model_spec

    from .supervisor import Supervisor

    specs = [spec for spec in (browser_pool_spec(config), local_model_spec(config)) if spec is not None]
    if not specs:
        return None
    supervisor = Supervisor(specs)
    supervisor.start()
    return supervisor
