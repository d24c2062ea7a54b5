"""gunicorn settings: ``gunicorn -c gunicorn.conf.py app:app`` (docs/OPERATIONS.md).

gevent workers (each patches itself: no ``preload_app``), bind from HOST/PORT, worker count
from the machine. The master migrates the database, starts and supervises the long-running
workers (browser pool, local model) once for the whole server, and stops them on exit. On
SIGTERM every web worker stops accepting at once, reports 503 on ``/health/ready`` and lets
running streams finish for up to ``GRACEFUL_TIMEOUT`` seconds; shortly before that deadline
it ends the ones still running itself (in-band ``server_shutdown``, ``[DONE]``, the partial
answer saved) rather than be SIGKILLed with them (qwenproxy/runtime/gworker.py).
"""

import os
from pathlib import Path

from qwenproxy.config import load_config
from qwenproxy.private import private_dir

_config = load_config()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's CPU set, not the host's
    except AttributeError:
        return os.cpu_count() or 1


bind = f"{_config['HOST']}:{_config['PORT']}"
# gunicorn's gevent worker + stop accepting at once on SIGTERM, end running streams in-band
# before graceful_timeout, JSON errors for what gunicorn refuses itself (qwenproxy/runtime/gworker.py)
worker_class = "qwenproxy.runtime.gworker.GatewayWorker"
workers = int(_config.get("WEB_WORKERS") or min(8, max(2, _cpus())))
worker_connections = int(_config["WORKER_CONNECTIONS"])  # open SSE streams count here
timeout = 120  # heartbeat: a gevent worker notifies every second unless its hub is blocked
graceful_timeout = int(_config["GRACEFUL_TIMEOUT"])  # long enough for a streamed answer to end
keepalive = int(_config["KEEPALIVE"])  # idle client connections; announced in a Keep-Alive header
# the HTTP parser's limits, raised from 4094 / 100 / 8190: a seed route takes its prompt in the
# query string (/gigachat?query=...), and browsers send long cookies; 8190 is gunicorn's maximum
limit_request_line = 8190
limit_request_fields = 200
limit_request_field_size = 16384
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
private_dir(_config["SESSION_DIR"])  # owner only (qwenproxy/ops/private.py)
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
    """Warn loudly when anyone on the network can use the gateway; start the long-running
    workers (browser pool, local model) from the master, never in a gevent worker."""
    global _supervisor
    from qwenproxy.ops.apikeys import ApiKeys
    from qwenproxy.ops.exposure import banner, exposure_warning

    hosts = [a if isinstance(a, str) else str(a[0]) for a in server.cfg.address]
    warning = exposure_warning(hosts, bool(ApiKeys(_config["API_KEYS_FILE"]).keys()))
    if warning:
        server.log.warning(banner(warning))
    from qwenproxy.runtime.supervisor import start_configured

    _supervisor = start_configured(_config)
    if _supervisor is not None:
        # the master's reaper waits for any child: let the supervisor take its own children's
        # exit status first (the real signal of a SIGKILLed pool, not "exit code 0")
        server.reap_workers = _supervisor.reap_first(server.reap_workers)


def post_worker_init(worker):
    """Responses that keep their connection open say for how long (``Keep-Alive:
    timeout=KEEPALIVE``). SIGTERM is the worker class's own (qwenproxy/runtime/gworker.py)."""
    from qwenproxy.runtime.keepalive import announce_under_gunicorn

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
