"""The seed's "Dual AI Chat API": ``/gigachat``, ``/qwen``, ``/qwen/status``, ``/history``.

Byte-compatible with seed 002 (spec §4.2): GET routes with ``query`` (or the README's
``message``) and ``session_id``, the same JSON keys, compact UTF-8 JSON as FastAPI writes it,
and FastAPI-style 422 bodies for missing parameters. Beyond the seed, compatibly:

* ``stream=true`` answers as SSE through the one stream loop (``streaming.serve``);
* history lives in the gateway's database (one ``Chat`` per ``session_id``), ordered by id,
  every row recording its ``bot``; ``/history?bot=gigachat|qwen`` filters it;
* the prompt carries the last ``DUAL_HISTORY_TURNS`` messages of the session (seed: 10),
  shared by both bots, while the full record stays queryable;
* ``DEFAULT_SYSTEM_PROMPT`` applies to both bots (the seed forgot GigaChat);
* a failed exchange is hidden from history, as the seed stored nothing on failure.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, request

from ..errors import ApiError, BadRequest, UpstreamUnavailable
from ..providers import Provider
from ..serving.conversations import kept_messages
from ..serving.dual import find_session, run_bot
from ..wire.openai import Collected
from ..wire.seed import ParamError, seed_json
from .common import registry

log = logging.getLogger(__name__)

bp = Blueprint("dual_chat", __name__)

BOTS = ("gigachat", "qwen")
# The seed's sampling for Qwen (chat.py); max_tokens and add_bos come from the query.
QWEN_SAMPLING = {"temperature": 0.4, "top_p": 0.9, "top_k": 60, "repetition_penalty": 1.1}
QWEN_DEFAULT_MAX_TOKENS = 4096
TRUE_WORDS = {"1", "true", "yes", "on", "t", "y"}
FALSE_WORDS = {"0", "false", "no", "off", "f", "n"}
MAX_SESSION_ID = 200

START_WORKER_HINT = (
    "Start the local Qwen2.5-Coder worker with `python -m workers.inference -m PATH` "
    "(or set LOCAL_MODEL_PATH and restart the gateway), then check GET /qwen/status."
)


@bp.errorhandler(ApiError)
def _error(err: ApiError) -> Response:
    """Our usual ``{"error": {...}}`` plus the seed's ``detail``, for its frontend."""
    body = err.to_dict()
    body["detail"] = getattr(err, "detail", err.message)
    return seed_json(body, err.status, err.headers)


# --- query parameters ------------------------------------------------------------------


def _text_param(*names: str) -> str:
    """The first of ``names`` present; 422 (FastAPI's ``missing``) when none is."""
    for name in names:
        value = request.args.get(name)
        if value is not None:
            if not value.strip():
                raise ParamError(name, "string_too_short", "String should have at least 1 character", value)
            return value
    raise ParamError(names[0], "missing", "Field required", None)


def _session_id() -> str:
    session_id = _text_param("session_id")
    if len(session_id) > MAX_SESSION_ID:
        raise ParamError(
            "session_id",
            "string_too_long",
            f"String should have at most {MAX_SESSION_ID} characters",
            session_id,
        )
    return session_id


def _bool_param(name: str, default: bool) -> bool:
    value = request.args.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ParamError(name, "bool_parsing", "Input should be a valid boolean, unable to interpret input", value)


def _int_param(name: str, default: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ParamError(
            name, "int_parsing", "Input should be a valid integer, unable to parse string as an integer", value
        ) from None
    if number < 1:
        raise ParamError(name, "greater_than_equal", "Input should be greater than or equal to 1", value)
    return number


# --- history -----------------------------------------------------------------------------


# --- running a bot ---------------------------------------------------------------------


# --- routes ----------------------------------------------------------------------------


@bp.get("/gigachat")
def gigachat() -> Response:
    """``{"response": text}`` from GigaChat (``GIGACHAT_MODEL``, or ``model=GigaChat-2-Max``)."""
    query = _text_param("query", "message")
    session_id = _session_id()
    stream = _bool_param("stream", False)
    provider = registry().get("gigachat")
    if provider is None:
        raise UpstreamUnavailable("GigaChat is not enabled in this gateway", code="gigachat_not_configured")
    model = request.args.get("model") or None
    if model is not None and not provider.owns(model):
        raise BadRequest(f"`model` must be a GigaChat model, not {model!r}", param="model")
    return run_bot(
        "gigachat",
        provider,
        query=query,
        session_id=session_id,
        stream=stream,
        model=model,
        shape=lambda collected: {"response": collected.text},
    )


def local_provider() -> Provider:
    provider = registry().get("local")
    if provider is None:
        raise UpstreamUnavailable(
            f"The local Qwen2.5-Coder worker is not configured. {START_WORKER_HINT}",
            code="local_worker_unavailable",
        )
    return provider


@bp.get("/qwen")
def qwen() -> Response:
    """``{"response", "generation_time", "tokens_generated"}`` from the local coder worker."""
    query = _text_param("query", "message")
    session_id = _session_id()
    max_tokens = _int_param("max_tokens", QWEN_DEFAULT_MAX_TOKENS)
    add_bos = _bool_param("add_bos", True)
    stream = _bool_param("stream", False)
    provider = local_provider()
    started = time.monotonic()

    def shape(collected: Collected) -> dict[str, Any]:
        raw = (collected.usage.raw if collected.usage else None) or {}
        elapsed = raw.get("generation_time")
        if not isinstance(elapsed, (int, float)):
            elapsed = time.monotonic() - started
        tokens = raw.get("tokens_generated")
        if not isinstance(tokens, int):
            tokens = collected.usage.completion_tokens if collected.usage else 0
        return {"response": collected.text, "generation_time": float(elapsed), "tokens_generated": tokens}

    options = {
        "top_k": QWEN_SAMPLING["top_k"],
        "repetition_penalty": QWEN_SAMPLING["repetition_penalty"],
        "add_bos": add_bos,
    }
    try:
        return run_bot(
            "qwen",
            provider,
            query=query,
            session_id=session_id,
            stream=stream,
            shape=shape,
            max_tokens=max_tokens,
            temperature=QWEN_SAMPLING["temperature"],
            top_p=QWEN_SAMPLING["top_p"],
            options=options,
        )
    except UpstreamUnavailable as exc:
        if START_WORKER_HINT in exc.message:
            raise
        raise UpstreamUnavailable(
            f"{exc.message} {START_WORKER_HINT}", code="local_worker_unavailable", headers=exc.headers
        ) from exc


@bp.get("/qwen/status")
def qwen_status() -> Response:
    """Always 200: ``{"available", "model_loaded", "status"}`` of the local coder worker, plus
    ``kernel`` once a loaded worker reports it."""
    provider = registry().get("local")
    if provider is None:
        return seed_json(
            {
                "available": False,
                "model_loaded": False,
                "status": f"Connection error: the local worker is not configured. {START_WORKER_HINT}",
            }
        )
    try:
        info = provider.status() or {}
    except Exception as exc:  # this route never fails
        log.warning("local worker status failed: %s", exc)
        info = {"available": False, "status": f"Connection error: {exc}"}
    model_loaded = bool(info.get("model_loaded", False))
    available = bool(info.get("available", model_loaded))
    status = info.get("status")
    if not isinstance(status, str) or not status:
        status = "healthy" if model_loaded else ("loading" if available else "unavailable")
    if not available and START_WORKER_HINT not in status:
        status = f"{status}. {START_WORKER_HINT}"
    body = {"available": available, "model_loaded": model_loaded, "status": status}
    if info.get("kernel"):
        body["kernel"] = info["kernel"]  # what runs the int4 weights (an addition to the seed's three keys)
    return seed_json(body)


@bp.get("/history")
def history() -> Response:
    """``{"history": [{"role", "content"}, ...]}``, the whole session, oldest first."""
    session_id = _session_id()
    bot = request.args.get("bot") or None
    if bot is not None and bot not in BOTS:
        raise ParamError("bot", "enum", "Input should be 'gigachat' or 'qwen'", bot)
    chat = find_session(session_id)
    rows = list(kept_messages(chat, bot)) if chat is not None else []
    return seed_json({"history": [{"role": m.role, "content": m.content} for m in rows]})
