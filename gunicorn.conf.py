"""gunicorn settings: ``gunicorn -c gunicorn.conf.py app:app`` (docs/OPERATIONS.md).

gevent workers (each patches itself: no ``preload_app``), bind from HOST/PORT, worker count
from the machine. The master migrates the database, starts and supervises the long-running
workers (browser pool, local model) once for the whole server, and stops them on exit. On
SIGTERM every web worker stops accepting, reports 503 on ``/health/ready`` and lets running
streams finish for up to ``GRACEFUL_TIMEOUT`` seconds.
"""

import os
from pathlib import Path

from qwenproxy.config import load_config

_config = load_config()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's CPU set, not the host's
    except AttributeError:
        return os.cpu_count() or 1


bind = f"{_config['HOST']}:{_config['PORT']}"
worker_class = "gevent"
workers = int(_config.get("WEB_WORKERS") or min(8, max(2, _cpus())))
worker_connections = int(_config["WORKER_CONNECTIONS"])  # open SSE streams count here
timeout = 120  # heartbeat: a gevent worker notifies every second unless its hub is blocked
graceful_timeout = int(_config["GRACEFUL_TIMEOUT"])  # long enough for a streamed answer to end
keepalive = int(_config["KEEPALIVE"])  # idle client connections; announced in a Keep-Alive header
# gunicorn >= 25 opens a control socket at one fixed path per user: two servers (or a test run
# beside a real one) would fight over it. Nothing here uses gunicornc.
control_socket_disable = True
preload_app = False
accesslog = "-"  # stdout; also LOGS_DIR/access.log (on_starting)
errorlog = "-"  # stderr; also LOGS_DIR/error.log
loglevel = str(_config["LOG_LEVEL"]).lower()
access_log_format = '%({x-request-id}o)s %(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'

# Prometheus multiprocess mode: every worker writes its samples under this directory and
# /metrics adds them up. Set before any worker imports prometheus_client.
_own_metrics_dir = not _config.get("PROMETHEUS_MULTIPROC_DIR")
_metrics_dir = _config.get("PROMETHEUS_MULTIPROC_DIR") or str(
    Path(_config["SESSION_DIR"]).resolve() / "metrics" / str(os.getpid())
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
Path(_metrics_dir).mkdir(parents=True, exist_ok=True)  # --check-config loads the app right here

_supervisor = None


def on_starting(server):
    """Once, in the master, before any worker: logs to LOGS_DIR, a fresh metrics directory,
    migrations."""
    from qwenproxy import db
    from qwenproxy.ops import logs, metrics

    logs.attach_gunicorn_files(_config["LOGS_DIR"])
    metrics.reset_multiproc_dir(_metrics_dir, clean_siblings=_own_metrics_dir)
    db.bind(_config["DATABASE_URL"])
    db.upgrade()


def when_ready(server):
    """Start the long-running workers (browser pool, local model) from the master, never in a
    gevent worker."""
    global _supervisor
    from qwenproxy.runtime.supervisor import start_configured

    _supervisor = start_configured(_config)


def post_worker_init(worker):
    """SIGTERM first marks the worker draining (``/health/ready`` -> 503), then gunicorn's own
    handler stops accepting and waits for the running streams. Responses that keep their
    connection open say for how long (``Keep-Alive: timeout=KEEPALIVE``)."""
    from qwenproxy.ops.lifecycle import drain_on_sigterm
    from qwenproxy.runtime.keepalive import announce_under_gunicorn

    drain_on_sigterm(worker.wsgi, worker.handle_exit)
    announce_under_gunicorn(keepalive)


def child_exit(server, worker):
    """A web worker is gone: drop its live gauges from the metrics."""
    from qwenproxy.ops import metrics

    metrics.mark_worker_dead(worker.pid, _metrics_dir)


def on_exit(server):
    """Stop the supervised workers (after the web workers have finished their streams)."""
    if _supervisor is not None:
        # the browser pool drains its running jobs before closing Chromium
        _supervisor.stop(
            timeout=max(float(_config["BROWSER_DRAIN_TIMEOUT"]), float(_config["GRACEFUL_TIMEOUT"]) / 2) + 10
        )
    if _own_metrics_dir:
        import shutil

        shutil.rmtree(_metrics_dir, ignore_errors=True)
