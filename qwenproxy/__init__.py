"""qwenproxy: an OpenAI-compatible gateway to Qwen web, GigaChat and a local Qwen2.5-Coder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from .config import VERSION, load_config

__version__ = VERSION


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config`` (tests) overrides defaults, ``.env`` and the environment."""
    app = Flask(__name__)
    testing = bool(config and config.get("TESTING"))
    # a test's mapping is the whole truth: neither the environment nor .env leak into it
    settings = load_config(config, environ={} if testing else None, env_file="" if testing else None)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = int(float(app.config["MAX_REQUEST_MB"]) * 1024 * 1024)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    from .private import private_dir

    private_dir(app.config["SESSION_DIR"])  # accounts, browser profiles, the database: owner only
    private_dir(app.config["UPLOADS_DIR"])

    from . import db
    from .accounts import cli as accounts_cli
    from .accounts import store as account_store
    from .api import anthropic, chat, chats, dual_chat, errors, files, health, images, openai, responses, status, videos
    from .ops import apikeys, middleware, ratelimit
    from .providers import build_registry
    from .serving.live import LiveTurns

    middleware.configure_logging(app.config["LOG_LEVEL"], app.config.get("LOGS_DIR"))
    middleware.init_app(app)
    health.init_app(app)  # probes, /metrics, the status page at /, request counting
    db.init_app(app)
    apikeys.init_app(app)
    ratelimit.init_app(app)
    errors.init_app(app)
    blueprints = (
        openai,
        chat,
        chats,
        status,
        dual_chat,
        images,
        videos,
        files,
        anthropic,
        responses,
    )
    for module in blueprints:
        app.register_blueprint(module.bp)

    account_store.init_app(app)  # the Qwen accounts registry, before the providers use it
    accounts_cli.init_app(app)
    app.extensions["providers"] = build_registry(app)
    app.extensions["live_turns"] = LiveTurns()  # ended in-band before a shutdown deadline
    return app
