"""``GET /api/status``: accounts, providers and overall health, in JSON."""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify

from .common import registry

bp = Blueprint("status", __name__)


@bp.get("/api/status")
def status() -> Response:
    providers = {p.name: p.status() for p in registry()}
    # the accounts (and browser pool) of the provider that signs in with accounts
    pooled = next((s for s in providers.values() if isinstance(s.get("accounts"), list)), {})
    accounts = pooled.get("accounts", [])
    usable = any(a.get("status") == "OK" for a in accounts)
    guest = bool(providers.get("qwen", {}).get("guest"))  # QWEN_GUEST=auto and no usable account
    if usable:
        message = "Авторизация активна"
    elif guest:
        message = f"Qwen chats are served as a guest (no usable account: {_why(accounts)})"
    else:
        message = _why(accounts)
    body = {
        "status": "ok" if usable or guest else "degraded",
        "authenticated": usable,
        "guest": guest,
        "mode": "accounts" if usable else ("guest" if guest else "none"),
        "message": message,
        "accounts": accounts,
        "providers": providers,
        "defaultModel": providers.get("qwen", {}).get("defaultModel") or current_app.config["DEFAULT_MODEL"],
        "worker": os.getpid(),
    }
    if "browserPool" in pooled:
        body["browserPool"] = pooled["browserPool"]  # browsers, pages, queue, served, restarts
    return jsonify(body)


def _why(accounts: list[dict]) -> str:
    if not accounts:
        return "No Qwen account: run `flask accounts add` (or set QWEN_TOKEN)"
    waiting = sorted(a["resetAt"] for a in accounts if a.get("status") == "WAIT" and a.get("resetAt"))
    invalid = [str(a.get("id")) for a in accounts if a.get("status") == "INVALID"]
    human = [str(a.get("id")) for a in accounts if a.get("status") == "NEEDS_HUMAN"]
    parts = []
    if human:
        parts.append(f"Qwen shows a captcha to {', '.join(human)}: run `flask accounts solve ID` and pass it once")
    if waiting:
        parts.append(f"Every usable Qwen account is waiting for its quota; the first is free again at {waiting[0]}")
    if invalid:
        parts.append(f"Invalid accounts ({', '.join(invalid)}): run `flask accounts relogin ID`")
    return ". ".join(parts) or "No usable Qwen account"
