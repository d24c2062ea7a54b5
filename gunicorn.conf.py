"""gunicorn settings: ``gunicorn -c gunicorn.conf.py app:app``.

gevent workers (the worker patches itself: no ``preload_app``), bind from HOST/PORT.
"""

import multiprocessing

from qwenproxy.config import load_config

_config = load_config()

bind = f"{_config['HOST']}:{_config['PORT']}"
worker_class = "gevent"
workers = int(_config.get("WEB_WORKERS") or min(4, max(2, multiprocessing.cpu_count())))
worker_connections = 1000
timeout = 120
graceful_timeout = int(_config["GRACEFUL_TIMEOUT"])
control_socket_disable = True
preload_app = False
accesslog = "-"
errorlog = "-"


def on_starting(server):  # noqa: ANN001 - gunicorn hook signature
    """Apply migrations once, in the master, before any worker starts."""
    from qwenproxy import db

    db.bind(_config["DATABASE_URL"])
    db.upgrade()
