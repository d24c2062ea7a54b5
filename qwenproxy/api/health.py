"""Operations surface: ``/health/live``, ``/health/ready``, ``/metrics``, the status page at
``/`` and the OpenAPI document at ``/api/openapi.json``; plus the after-request hook that
counts requests and keeps the recent-request log.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, render_template, request

from .. import db
from ..config import VERSION
from ..ops import requestlog
from ..ops.exposure import exposure_warning
from ..ops.lifecycle import Health, health, workers_file
from ..ops.logs import redact
from ..ops.metrics import Metrics, read_workers_file, state_metrics
from ..ops.middleware import keys_configured
from .common import registry
from .openapi import document

bp = Blueprint("health", __name__)

# requests that are not worth a row in the request log (probes, scrapes, the page itself)
QUIET_PREFIXES = ("/health", "/metrics", "/static", "/api/openapi.json", "/favicon.ico")


def provider_usable(status: dict[str, Any]) -> bool:
    """Whether a provider's ``status()`` says it can serve a request now."""
    if status.get("guest"):  # no usable account, chats go out as a guest (QWEN_GUEST=auto)
        return True
    if isinstance(status.get("accounts"), list):
        return any(a.get("status") == "OK" for a in status["accounts"])
    for key in ("model_loaded", "available", "configured"):
        if key in status:
            return bool(status[key])
    return True


def provider_statuses() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for provider in registry():
        try:
            out[provider.name] = provider.status() or {}
        except Exception as exc:  # a probe must answer whatever a provider does
            out[provider.name] = {"name": provider.name, "error": f"{type(exc).__name__}: {exc}", "available": False}
    return out


def database_check() -> str:
    try:
        with db.session():
            db.database.execute_sql("SELECT 1")
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


# --- probes ---------------------------------------------------------------------------


@bp.get("/health/live")
def live() -> Response:
    """The process answers (a container's healthcheck)."""
    h = health()
    return jsonify({"status": "ok", "pid": h.pid, "uptime": round(time.time() - h.started, 1), "version": VERSION})


@bp.get("/health/ready")
def ready() -> Response:
    """200 when the database answers and a provider can serve; 503 otherwise or while draining."""
    h = health()
    statuses = provider_statuses()
    usable = {name: provider_usable(status) for name, status in statuses.items()}
    database = database_check()
    reasons = []
    if h.draining:
        reasons.append("draining: the server is shutting down")
    if database != "ok":
        reasons.append(f"database {database}")
    if not any(usable.values()):
        reasons.append("no provider is usable (see /api/status)")
    body = {
        "status": "ready" if not reasons else "unavailable",
        "draining": h.draining,
        "database": database,
        "providers": usable,
        "pid": h.pid,
    }
    if reasons:
        body["reasons"] = reasons
    response = jsonify(body)
    response.status_code = 503 if reasons else 200
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/health")
def health_summary() -> Response:
    """The readiness answer, under the short name load balancers try first."""
    return ready()


@bp.get("/metrics")
def metrics() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def state():  # type: ignore[no-untyped-def]
        statuses = provider_statuses()
        usable = {name: provider_usable(status) for name, status in statuses.items()}
        workers = read_workers_file(workers_file(app))
        return state_metrics(statuses, usable, workers, health(app).draining)

    body, content_type = app.extensions["metrics"].scrape(state)
    return Response(body, content_type=content_type)


@bp.get("/api/openapi.json")
def openapi() -> Response:
    """The OpenAPI document, built from the routes and request models once per process."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = json.dumps(document(app), ensure_ascii=False, indent=2).encode("utf-8")
    return Response(app.extensions["openapi"], mimetype="application/json")


# --- the status page ------------------------------------------------------------------


@bp.get("/")
def status_page() -> Response:
    """What a user opens first: is my proxy working? Server-rendered, refreshes itself."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    h = health(app)
    statuses = provider_statuses()
    usable = {name: provider_usable(status) for name, status in statuses.items()}
    accounts = [a for s in statuses.values() for a in (s.get("accounts") or [])]
    try:
        models = [card.id for card in registry().list_models()]
    except Exception:
        models = []
    try:
        recent = requestlog.recent(30)
        errors = requestlog.recent(10, errors_only=True)
    except Exception:
        recent, errors = [], []
    database = database_check()
    ready_now = database == "ok" and any(usable.values()) and not h.draining
    html = render_template(
        "status.html",
        version=VERSION,
        ready=ready_now,
        draining=h.draining,
        database=database,
        pid=h.pid,
        uptime=_duration(time.time() - h.started),
        providers={
            name: {"usable": usable[name], "state": _state(usable[name], s), "details": _details(s)}
            for name, s in statuses.items()
        },
        accounts=accounts,
        guest=any(s.get("guest") for s in statuses.values()),
        workers=read_workers_file(workers_file(app)),
        web_workers=app.config.get("WEB_WORKERS") or "auto",
        models=models,
        default_model=statuses.get("qwen", {}).get("defaultModel") or app.config.get("DEFAULT_MODEL"),
        recent=[_row(r) for r in recent],
        errors=[_row(r) for r in errors],
        refresh=refresh_seconds(request.args.get("refresh")),
        exposure=exposure_warning([str(app.config.get("HOST") or "")], keys_configured(app)),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def refresh_seconds(value: str | None, default: int = 10) -> int:
    """``?refresh=N``: ASCII digits only (``"²".isdigit()`` is true too), at most an hour."""
    if value is None or not re.fullmatch(r"[0-9]{1,6}", value):
        return default
    return min(int(value), 3600)


def _state(usable: bool, status: dict[str, Any]) -> str:
    if status.get("guest"):
        return "guest"
    if usable:
        return "usable"
    return "not configured" if status.get("configured") is False else "unusable"


def _details(status: dict[str, Any]) -> str:
    skip = {"name", "accounts", "browserPool", "guest"}
    parts = []
    for key, value in status.items():
        if key in skip or value in (None, "", [], {}):
            continue
        parts.append(f"{key}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


SHOWN_MESSAGE_CHARS = 160


def _row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.get("created") or 0))
    if out.get("error_message"):  # error messages may echo a client's input: scrubbed and cut
        message = redact(str(out["error_message"]))
        if len(message) > SHOWN_MESSAGE_CHARS:
            message = message[: SHOWN_MESSAGE_CHARS - 1] + "…"
        out["error_message"] = message
    return out


# --- counting requests ------------------------------------------------------------------


def route_label() -> str:
    return request.url_rule.rule if request.url_rule is not None else "<unmatched>"


def init_app(app: Flask) -> None:
    app.extensions["health"] = Health()
    app.extensions["metrics"] = Metrics(app.config.get("PROMETHEUS_MULTIPROC_DIR"))
    app.register_blueprint(bp)
    keep = int(app.config.get("REQUEST_LOG_KEEP") or 1000)

    @app.before_request
    def _started() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = route_label()
        m: Metrics = app.extensions["metrics"]
        m.child(m.requests, request.method, route, str(response.status_code)).inc()
        m.child(m.request_seconds, route).observe(elapsed)
        if g.get("rejected"):  # refused before any route: a count, never a row anyone could flood
            m.rejected.labels(g.rejected).inc()
            return response
        if request.method == "OPTIONS" or request.path == "/" or request.path.startswith(QUIET_PREFIXES):
            return response
        if g.get("request_log_deferred"):  # a stream: the stream loop records it when it ends
            return response
        fields: dict[str, Any] = {
            "request_id": g.get("request_id"),
            "method": request.method,
            "route": route if route != "<unmatched>" else request.path,
            "status": response.status_code,
            "duration_ms": round(elapsed * 1000, 2),
        }
        fields.update(g.get("request_log") or {})
        if response.status_code >= 400 and not fields.get("error_code") and response.is_json:
            error = (response.get_json(silent=True) or {}).get("error")
            if isinstance(error, dict):
                fields["error_code"] = error.get("code") or error.get("type")
                fields["error_message"] = error.get("message")
        requestlog.record(keep, **fields)
        return response
