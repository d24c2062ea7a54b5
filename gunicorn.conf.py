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


_supervisor = None


def when_ready(server):  # noqa: ANN001 - gunicorn hook signature
    """Start the long-running workers (browser pool, local model) from the master, never in a gevent worker."""
    global _supervisor
    from qwenproxy.supervisor import Supervisor
    from workers.browser_pool import worker_spec as browser_pool_spec
    from workers.inference import worker_spec as local_model_spec

    specs = [spec for spec in (browser_pool_spec(_config), local_model_spec(_config)) if spec is not None]
    if specs:
        _supervisor = Supervisor(specs)
        _supervisor.start()


def on_exit(server):  # noqa: ANN001 - gunicorn hook signature
    """Stop them (the browser pool drains, then closes Chromium)."""
    if _supervisor is not None:
        _supervisor.stop(timeout=float(_config["BROWSER_DRAIN_TIMEOUT"]) + 10)
