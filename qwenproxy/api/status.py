"""``GET /api/status``: accounts, providers and overall health, in JSON."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .common import registry

bp = Blueprint("status", __name__)


@bp.get("/api/status")
def status() -> Response:
    providers = {p.name: p.status() for p in registry()}
    accounts = providers.get("qwen", {}).get("accounts", [])
    usable = any(a.get("status") == "OK" for a in accounts)
    body = {
        "status": "ok" if usable else "degraded",
        "authenticated": usable,
        "message": "Авторизация активна" if usable else _why(accounts),
        "accounts": accounts,
        "providers": providers,
        "defaultModel": current_app.config["DEFAULT_MODEL"],
    }
    return jsonify(body)


def _why(accounts: list[dict]) -> str:
    if not accounts:
        return "No Qwen account: set QWEN_TOKEN or run `flask accounts add`"
    if any(a.get("status") == "WAIT" for a in accounts):
        return "Every Qwen account is waiting for its quota to reset"
    return "Every Qwen account is invalid: run `flask accounts relogin ID`"
