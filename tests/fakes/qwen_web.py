"""Offline fake of chat.qwen.ai's web API ("API v2"), served over real HTTP for the tests.

Every behaviour follows ``/work/shared/specs/qwen-web.md``; where the real upstream is
unknown or varies, the fake takes the stricter, real-looking choice (marked *[choice]*).

Transport
- A werkzeug threaded server on 127.0.0.1: HTTP/1.1 with persistent connections, as the real
  site (``keep_alive``, default on; off: ``Connection: close`` after every response), chunked
  bodies. ``connections`` counts the TCP connections accepted. Each SSE event is one write +
  flush, so clients see events as they are produced.

Auth (§2)
- §2.3: tokens are HS256 JWTs signed with the fake's secret, payload
  ``{"id", "last_password_change", "exp"}`` (no ``iat``), lifetime 7 days by default.
- §2.4: ``Authorization: Bearer <jwt>`` or the ``token`` cookie; the header wins when both
  are sent (Open WebUI order). Missing, garbage, badly signed, expired or revoked tokens on
  logged-in routes → HTTP 200 ``{"success":false,...,"data":{"code":"unauthorized",
  "details":"Token has expired, please log in again."}}`` (§2.2, §3.0).
- §2.2: ``POST /api/v1/auths/signin`` with ``{"email","password": sha256-hex}`` → Open WebUI
  style session JSON (+ ``token`` cookie); wrong credentials → HTTP 401 ``{"detail":…}``.
  ``GET /api/v1/auths/`` → session info, or the ``unauthorized`` envelope.
  ``GET /auth`` → a plain sign-in page (e-mail + password form) whose script hashes the
  password with SHA-256, posts it to the sign-in API and keeps the token in
  ``localStorage.token`` (unless ``signin_page_local_storage`` is off) and, from the
  response, in the ``token`` cookie: what ``flask accounts add`` waits for in a browser.
  Guest mode (no JWT) only with the ``guest_mode`` switch (see the 2026 table below).

Envelopes and errors (§3.0)
- Success ``{"success":true,"request_id":…,"data":…}``, errors the same with
  ``success:false`` and ``data.code``/``data.details``, always HTTP 200 ``application/json``,
  compact separators (as captured), UTF-8 unescaped.
- Hostile modes (``hostile`` knob; ``hostile_times`` limits how often): ``captcha`` → the
  ``FAIL_SYS_USER_VALIDATE`` slider JSON; ``waf`` → ``text/html`` page with
  ``<meta name="aliyun_waf_aa" …>``; ``actual_status_404`` → HTTP 200 with
  ``x-actual-status-code: 404`` and a small JSON body. They guard ``chats/new`` and
  completions (checked before auth: the WAF sits in front of the app). *[choice]* A request
  body over ``captcha_body_limit`` (128 KiB) on those routes always gets the slider (§3.0).
- Legacy ``POST /api/chat/completions`` → 504 HTML (retired, §3.9). Other ``/api`` paths →
  404 ``{"detail":"Not Found"}`` (FastAPI style), wrong method → 405.

Models (§3.3, §6.1)
- ``GET /api/models`` (auth optional, no envelope): ``{"data":[{id,name,object,owned_by,
  info:{…,meta:{capabilities, abilities, chat_type, max_context_length, …}},preset,
  action_ids}]}``; default ids = the 18 of §6.1; thinking models carry the thinking/summary
  lengths, the others ``max_generation_length``; ``is_single_round`` for qwq/qvq and
  ``file_limits`` for qwen2.5-omni-7b as in §3.3.

Chats (§3.4, §3.7)
- ``POST /api/v2/chats/new`` validates ``models`` (non-empty list of known ids, else
  ``Not_Found`` "Model not found"), ``chat_mode`` (normal/guest/local), ``chat_type`` and a
  millisecond ``timestamp`` *[choice: seconds are rejected]*; answers ``data.id``.
- ``GET /api/v2/chats/`` (list), ``GET /api/v2/chats/<id>`` (``data.currentId``,
  ``data.chat.history.messages`` map, ``data.chat.messages`` array), ``DELETE`` →
  ``data: true``; unknown or foreign chat → ``Not_Found`` "Chat not found"
  *[choice: details text invented]*. ``GET /api/v2/users/status`` → ``data: true``.

Completions (§3.5, Appendix A) — checks in this order, all HTTP 200 envelopes:
  hostile/WAF → auth → JSON body → ``chat_id`` in query and body equal (``Bad_Request``) →
  exactly one message (``Bad_Request`` "Invalid input too many messages.") → [2026 body
  check, switch] → known model (``Not_Found`` "Model not found") → thinking lock
  (``invalid_input``) → chat type; image_edit needs an image in ``files``; document files
  [switch] → chat exists and belongs to the user (``Not_Found``
  "Chat not found") → not generating (``Bad_Request`` "The chat is in progress!") →
  ``parent_id`` null on the first turn, else the ``response_id`` of an assistant message of
  that chat (``Bad_Request`` "The parent message does not exist." *[choice: text
  invented]*) → per-token quota (``RateLimited`` with ``template`` and ``num`` =
  ``rate_limit_hours``). ``messages[0].parent_id``/``parentId`` are recorded, not checked
  (upstream behaviour unknown).
- ``stream:true`` (§4.1–4.3): ``Content-Type: text/event-stream`` *[choice: no charset, so
  clients must decode UTF-8 themselves]*; ``data: <json>\\n\\n`` events, no ``event:``/``id:``,
  no ``[DONE]``. Order: ``response.created`` (inconsistent spacing and a trailing space, as
  captured; ``chat_id``, ``parent_id`` = new server id of the user message, ``response_id``,
  ``response_index:"0"``) → optional ``response.info`` keep-alive (``info_events``) →
  [``think`` deltas + ``think`` finished delta when ``feature_config.thinking_enabled``,
  §4.4 2025 style] → one ``answer`` delta per word-ish token with **cumulative** ``usage``
  (§4.7; ``input_tokens`` includes a hidden system prompt) → one empty ``typing`` delta →
  the ``finished`` delta without ``usage`` (Oct 2025 capture). Deltas use ``", "``/``": "``
  separators and raw UTF-8. Without ``feature_config.output_schema == "phase"`` no delta
  carries ``phase`` (§3.5) — so a ``think`` finished delta then looks like the end.
  ``stream`` absent counts as ``true``. Without ``incremental_output: true`` each delta carries the
  cumulative text of its phase (§3.5 "deltas instead of cumulative text").
- ``stream:false`` → §3.5 envelope ``data: {chat_id: "", parent_id, message_id,
  messages: null, choices: [{message: {role, content}}]}`` (``chat_id`` empty as captured).
- ``hostile == "truncate"``: after ``hostile_after`` deltas the socket is shut down without
  the chunked terminator (client sees a broken body, no ``finished``);
  ``"stream_error"``: after ``hostile_after`` deltas an in-stream
  ``{"error": {"code", "details"}}`` event (§4.2 item 5), then the body ends cleanly.
- The chat is ``in_progress`` from acceptance until the generator produced the finished
  delta, hit a hostile cut, or the client went away. A failed write (client closed the
  connection) closes the generator: its ``response_id`` goes to ``aborted``; a stream whose
  finished delta was written goes to ``completed``.

Anti-bot mode (``antibot = True``; §2.4, §3.0, §9 item 1)
- The site's page (``GET /``, ``GET /c/<chat_id>``) is HTML whose script computes a
  fingerprint cookie ``ssxmod_itna`` from a nonce in the page. While ``antibot`` is on, every
  ``/api/models`` and ``/api/v2/*`` call without a valid ``ssxmod_itna`` (a nonce this fake
  issued, with the checksum only the page's JavaScript computes) gets the slider-captcha JSON.
  So a plain HTTP client (``QWEN_TRANSPORT=direct``) is refused, and a ``fetch()`` made inside
  that page (the browser pool) passes. Records ``antibot_refused`` and ``pages_served``.
- ``baxia_ready_after`` (None: off): the page also carries the site's anti-bot module,
  ``window.__baxia__.getFYModule().getUidToken()``, which hands out its token that many
  seconds after the page loaded (``math.inf``: never); once ready it signs every ``fetch``
  of the page with a ``bx-umidtoken`` header (2026 spec §4).
- ``frontend_version`` (None: off): the page carries the front end's config,
  ``window.__APP_CONFIG__ = {"version": …}`` *[choice: where the real bundle keeps it is not
  known]*; the browser pool sends that as the ``version`` header (recorded, not checked).

Modes (§3.5, §4.4–4.6), picked by ``messages[0].chat_type`` and ``feature_config``:
- thinking (``thinking_enabled: true``): ``thinking_style = "think"`` (2025, default) sends
  ``think`` text deltas then a ``think`` finished delta; ``"summary"`` (2026) sends
  ``thinking_summary`` deltas with ``content: ""`` and **cumulative**
  ``extra.summary_title.content[]`` / ``extra.summary_thought.content[]`` arrays *[choice:
  the last thought also grows in place once]*, then a ``thinking_summary`` finished delta.
- ``chat_type: "search"``: a ``web_search`` ``function_call`` delta (``queries``), a
  ``role: "function"`` ``web_search`` finished delta with ``extra.tool_result.docs[{url,
  title, snippet, date}]`` (``search_docs`` knob), then the answer followed by ``[[1]]``
  ``[[2]]`` citations.
- ``chat_type: "t2i"``: one ``image_gen`` delta whose ``content`` is the image URL
  ``<image_base_url>/output/<user>/t2i/<id>/<ts>.png?key=<jwt-ish>`` with
  ``extra.output_image_hw`` from the body's ``size`` (§3.5), then an ``image_gen`` finished
  delta, which ends the stream *[choice: no answer phase]*. ``GET /output/…`` serves a small
  PNG when ``image_base_url`` points at the fake (``key`` required).
- Tool-calling tests script the model with the ``answer`` knob (user text → answer).

Files (§5.1, §5.3)
- ``POST /api/v2/files/getstsToken`` answers the §3.0 envelope, ``/api/v1/files/getstsToken``
  the flat object (``sts_v1_enveloped`` wraps it too); ``sts_versions`` says which exist (the
  other answers 404 ``{"detail":"Not Found"}``). The body needs ``filename`` (str),
  ``filesize`` (positive int or digit string) and ``filetype``; the answer carries
  ``file_path = <user_id>/<file_id>_<filename>`` and credentials granted by the attached
  ``oss`` (``tests.fakes.oss.FakeOSS``), whose presigned URL is ``file_url``; v2 gives
  ``region`` ``ap-southeast-1``, v1 the older ``oss-ap-southeast-1`` *[choice]*.
- ``POST /api/v2/files/parse`` ``{"file_id"}`` (a file of this user) → ``{"success":true}``;
  ``/parse/status`` ``{"file_id_list"}`` → ``data: [{file_id, status}]``: ``parsing`` for
  ``parse_polls`` polls, then ``parse_result`` (``success`` by default); unknown files →
  ``Not_Found``.

2026 site (``/work/shared/specs/qwen-web-2026.md``, sources in ``docs/QWEN_2026.md``)
Always on (harmless to 2025-style clients): ``GET /api/v2/models/`` (also without the slash;
``{"success","request_id","data":{"data":[…]}}``, every ``info.meta`` with ``think_skip``
and ``supports_non_streaming:false``); a model in ``thinking_locked_models`` (qwen3.8-max)
refuses ``feature_config.thinking_enabled`` other than ``true`` with
``{"success":false,…,"data":{"code":"invalid_input","details":…}}``; the v2 account routes;
``POST /api/v2/chat/completions/stop``; t2v tasks, image_edit, deep_research; the site page
sets a ``cna`` cookie. Switches (attributes; ``use_2026_site()`` sets the first four marked *):

==============================  =========  ====================================================
switch                          default    when set
==============================  =========  ====================================================
``models`` = ``MODELS_2026`` *  2025 list  qwen3.7-plus, qwen3.8-max, qwen3.7-max, qwen3.6-plus
``require_2026_body`` *         False      completions need ``version "2.1"``, ``chatId`` =
                                           ``chat_id``, both ``parentId``/``parent_id`` ("" =
                                           null), ms ``timestamp``, message ``user_action
                                           "chat"``, ``files[]``, ``timestamp``, ``models
                                           [model]``, ``chat_type``, ``sub_chat_type``,
                                           ``childrenIds[]``, ``extra.meta.subChatType``,
                                           ``feature_config.thinking_enabled`` (bool); chats/new
                                           has no ``title`` and ``chat_mode`` normal|guest.
                                           Else ``Bad_Request`` "Invalid input: <field>", the
                                           field appended to ``body_errors``. (Without
                                           ``output_schema:"phase"`` deltas lose ``phase``:
                                           always, as before.)
``delta_response_ids`` *        False      every delta carries top-level ``response_id`` and
                                           ``timestamp`` (s)
``thinking_style`` = summary *  "think"    ``thinking_summary`` phases
``models_v2``                   True       False: ``/api/v2/models/`` → 404 ``{"detail":…}``
``require_token_cookie``        False      only the ``token`` cookie authenticates
``captcha_body_limit``          131072     chats/new or completions body longer (bytes) → the
                                           slider-captcha JSON; None = no limit
``hostile`` = ``captcha_frame`` None       HTTP 200 ``text/event-stream`` whose frame number
                                           ``wall_after_frames`` (0 = first, before
                                           ``response.created``) is ``data: {"ret":
                                           stream_wall_ret, "data":{"url": …punish?x5secdata=…}}``,
                                           then the body ends (no ``finished``)
``hostile`` = ``html_frame``    None       same, the wall is ``data: <!doctypehtml>…`` (not JSON)
``hostile`` = ``html_line``     None       same, a bare ``<!doctypehtml>…`` line (no ``data:``)
``hostile`` = ``actual_status_403`` (/404) HTTP 200, ``x-actual-status-code: 403``, tiny JSON
``abandon_keeps_generating``    False      a client that leaves mid-stream leaves the chat
                                           busy: next completion → ``Bad_Request`` "The chat is
                                           in progress!" until stop (or ``abandon_seconds``)
``parallel_answers``            None       "interleave": two ``response.created`` (index "0",
                                           "1"), deltas alternate (branch 1 first), each with
                                           its ``response_id``; "empty_primary": branch 0 has
                                           no content. ``parallel_alt_answer`` = branch 1 text
``keep_open_after_finished``    False      after ``finished`` the body stays open for
                                           ``keep_open_seconds`` (30) or until the client closes
``guest_mode``                  False      no token + ``chat_mode:"guest"`` is served (owner =
                                           ``cna`` cookie), models = ``guest_models`` (None:
                                           qwen3.7-plus, qwen3.6-plus ∩ models)
``signin_v1_status``            None       405: ``/api/v1/auths/signin`` answers HTTP 405
``signin_v2``                   True       False: ``/api/v2/auths/signin`` answers 404
``token_lifetime``              604800     seconds, tokens from sign-in (v1, v2) and refresh
``refresh_rotates``             True       a refresh issues a new refresh token, old one dies
``entitlement_quota``           {}         model id / feature → quota overrides
``task_queued_polls``,          1, 2,      t2v task: queued for N polls, running for M
``task_running_polls``,         "success"  (progress 33, 66 …), then success (``content`` =
``task_outcome``                           video URL) or "failed" (``message``)
``check_documents``             False      ``file_class:"document"`` files must be this user's
                                           uploads with parse status success, else
                                           ``Bad_Request`` "Invalid input: files"
==============================  =========  ====================================================

Records: ``walls``, ``body_errors``, ``stop_calls``, ``parallel_turns``, ``held_open``,
``documents`` (with the uploaded text), ``image_edits``, ``tasks``, ``signin_calls``,
``refresh_calls``, ``settings_updates``, ``quota_calls``; ``last_request(path)``.

Not reproduced: ``files/confirm``, the header-based WAF heuristics (``bx-*``, ``version``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import select
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from tests.fakes import issued
from tests.fakes.qwen_site2026 import (
    GUEST_MODELS_2026,
    MODELS_2026,
    THINKING_LOCKED,
    THINKING_LOCKED_DETAILS,
    TINY_MP4,
    Site2026Mixin,
)
from tests.fakes.server import BackgroundServer

__all__ = [
    "DEFAULT_MODELS",
    "GUEST_MODELS_2026",
    "MODELS_2026",
    "THINKING_LOCKED",
    "FakeQwen",
    "running_fake_qwen",
]

DEFAULT_MODELS: list[str] = [
    "qwen3-max",
    "qwen3-vl-plus",
    "qwen3-coder-plus",
    "qwen3-omni-flash",
    "qwen-plus-2025-09-11",
    "qwen3-235b-a22b",
    "qwen3-30b-a3b",
    "qwen3-coder-30b-a3b-instruct",
    "qwen-max-latest",
    "qwen-plus-2025-01-25",
    "qwq-32b",
    "qwen-turbo-2025-02-11",
    "qwen2.5-omni-7b",
    "qvq-72b-preview-0310",
    "qwen2.5-vl-32b-instruct",
    "qwen2.5-14b-instruct-1m",
    "qwen2.5-coder-32b-instruct",
    "qwen2.5-72b-instruct",
]

EXPIRED_DETAILS = "Token has expired, please log in again."
RATE_LIMIT_DETAILS = "You've reached the upper limit for today's usage."
RATE_LIMIT_TEMPLATE = "You have reached the daily usage limit. Please wait {{num}} hours before trying again."
TOO_MANY_MESSAGES = "Invalid input too many messages."
CHAT_IN_PROGRESS = "The chat is in progress!"
MODEL_NOT_FOUND = "Model not found"
CHAT_NOT_FOUND = "Chat not found"
PARENT_NOT_FOUND = "The parent message does not exist."
INVALID_CREDENTIALS = "The email or password provided is incorrect. Please check for typos and try logging in again."
INJECTABLE = ("rate_limited", "unauthorized", "http_401", "http_403", "http_429")
# walls inside a 200 text/event-stream (2026 §4)
WALL_MODES = ("captcha_frame", "html_frame", "html_line")
HOSTILE_MODES = (
    "captcha",
    "waf",
    "actual_status_404",
    "actual_status_403",
    "truncate",
    "stream_error",
    *WALL_MODES,
)
PARALLEL_MODES = ("interleave", "empty_primary")
CHAT_MODES = ("normal", "guest", "local")
CHAT_MODES_2026 = ("normal", "guest")  # "local" is refused since 2026 (2026 §2)
CHAT_TYPES = (
    "t2t",
    "search",
    "t2i",
    "t2v",
    "image_edit",
    "deep_research",
    "web_dev",
    "artifacts",
    "slides",
    "learn",
    "travel",
)
IMAGE_HW = {"1:1": [1024, 1024], "16:9": [1280, 720], "9:16": [720, 1280], "4:3": [1152, 864], "3:4": [864, 1152]}
# a 1x1 PNG, served for generated images when image_base_url points at the fake
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
SIGNIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Qwen Chat</title></head>
<body><div class="login-container"><form id="signin">
<input type="email" name="email" id="email" placeholder="Email" required>
<input type="password" name="password" id="password" placeholder="Password" required>
<button type="submit">Sign in</button></form><p id="message"></p></div>
<script>
const STORE_LOCAL = __STORE_LOCAL__;
async function sha256hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, "0")).join("");
}
document.getElementById("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = document.getElementById("email").value;
  const password = await sha256hex(document.getElementById("password").value);
  const response = await fetch("/api/v1/auths/signin", {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({email, password}),
  });
  const data = await response.json();
  if (!response.ok || !data.token) {
    document.getElementById("message").textContent = data.detail || "Sign-in failed";
    return;
  }
  if (STORE_LOCAL) localStorage.setItem("token", data.token);
  document.querySelector(".login-container").remove();
  document.body.insertAdjacentHTML("beforeend", '<p id="welcome">Signed in</p>');
});
</script></body></html>
"""
SYSTEM_PROMPT_TOKENS = 24  # §4.7: input_tokens includes Qwen's hidden system prompt
_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+")
_WORDS_RE = re.compile(r"words:(\d+)")
LIVE_TEXT_LIMIT = 256 * 1024  # a message's text is kept exact after every delta up to this size
_MODEL_USER_ID = "8a5f6b3e-9f0b-4c1e-8a51-2f7c9d0e1b23"
_MODEL_CREATED_AT = 1732711466

# id -> (display name, thinking, max_context_length, vision)
_MODEL_TABLE: dict[str, tuple[str, bool, int, bool]] = {
    "qwen3-max": ("Qwen3-Max", True, 262144, True),
    "qwen3-vl-plus": ("Qwen3-VL-235B-A22B", True, 262144, True),
    "qwen3-coder-plus": ("Qwen3-Coder", False, 1048576, True),
    "qwen3-omni-flash": ("Qwen3-Omni-Flash", True, 65536, True),
    "qwen-plus-2025-09-11": ("Qwen3-Next-80B-A3B", True, 262144, True),
    "qwen3-235b-a22b": ("Qwen3-235B-A22B-2507", True, 131072, True),
    "qwen3-30b-a3b": ("Qwen3-30B-A3B-2507", True, 131072, True),
    "qwen3-coder-30b-a3b-instruct": ("Qwen3-Coder-Flash", False, 262144, True),
    "qwen-max-latest": ("Qwen2.5-Max", False, 131072, True),
    "qwen-plus-2025-01-25": ("Qwen2.5-Plus", False, 131072, True),
    "qwq-32b": ("QwQ-32B", True, 131072, False),
    "qwen-turbo-2025-02-11": ("Qwen2.5-Turbo", False, 1000000, True),
    "qwen2.5-omni-7b": ("Qwen2.5-Omni-7B", False, 30720, True),
    "qvq-72b-preview-0310": ("QVQ-Max", True, 131072, True),
    "qwen2.5-vl-32b-instruct": ("Qwen2.5-VL-32B-Instruct", False, 131072, True),
    "qwen2.5-14b-instruct-1m": ("Qwen2.5-14B-Instruct-1M", False, 1000000, True),
    "qwen2.5-coder-32b-instruct": ("Qwen2.5-Coder-32B-Instruct", False, 131072, True),
    "qwen2.5-72b-instruct": ("Qwen2.5-72B-Instruct", False, 131072, True),
    # 2026 §1 (contexts from a 2026-09 research note: 1M for plus, 256K for max)
    "qwen3.7-plus": ("Qwen3.7-Plus", True, 1000000, True),
    "qwen3.8-max": ("Qwen3.8-Max", True, 262144, True),
    "qwen3.7-max": ("Qwen3.7-Max", True, 262144, True),
    "qwen3.6-plus": ("Qwen3.6-Plus", True, 1000000, True),
}
_MODELS_2026_SET = frozenset(MODELS_2026)
_CHAT_TYPES_2026 = ["t2t", "search", "t2i", "image_edit", "t2v", "deep_research", "artifacts", "web_dev"]


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens that keep their leading spaces ("".join == text)."""
    return _TOKEN_RE.findall(text)


def default_answer(text: str) -> str:
    """``words:N`` → "w1 … wN" (long streams on demand), otherwise ``Echo: <text>``."""
    match = _WORDS_RE.search(text)
    if match:
        count = min(int(match.group(1)), 200_000)
        return " ".join(f"w{i}" for i in range(1, count + 1))
    return f"Echo: {text}"


def message_text(content: Any) -> str:
    """Text of a message ``content``: a string, or the ``text`` items of an array (§3.5)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [item.get("text", "") for item in content if isinstance(item, dict) and item.get("type") == "text"]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _spaced(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_compact(obj), status=status, headers=headers, content_type="application/json")


def _new_id() -> str:
    return str(uuid.uuid4())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]…`` through dicts, None when a level is missing or not a dict."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


class _HeaderDict(dict):
    """A plain dict of request headers with lower-case keys and case-insensitive lookups."""

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class _Stopped(Exception):
    """Raised inside a stream when the fake is shutting down."""


@dataclass
class _Turn:
    """One accepted completion request and its generation state."""

    token: str
    chat_id: str
    model: str
    user_message_id: str
    response_id: str
    stream: bool
    phase_schema: bool
    incremental: bool
    phases: list[tuple[str, list[str]]]
    input_tokens: int
    cut: str | None = None
    cut_after: int = 3
    output_tokens: int = 0
    reasoning_tokens: int = 0
    outcome: str | None = None
    generation_done: bool = False
    pieces: dict[str, list[str]] = field(default_factory=dict)  # phase -> text so far, in pieces
    sizes: dict[str, int] = field(default_factory=dict)  # phase -> characters so far

    def text(self, phase: str) -> str:
        """The phase's text so far (pieces joined once: a huge answer stays linear)."""
        parts = self.pieces.get(phase) or []
        if len(parts) > 1:
            parts[:] = ["".join(parts)]
        return parts[0] if parts else ""

    chat_type: str = "t2t"
    stop_requested: bool = False  # the stop endpoint was called while generating
    abandoned: bool = False  # the client left; the site keeps generating (abandon_keeps_generating)
    parallel: str | None = None  # one of PARALLEL_MODES: a second answer interleaves
    alt_response_id: str | None = None  # the response_index "1" answer
    alt_phases: list[tuple[str, list[Any]]] = field(default_factory=list)

    def usage(self, output: int | None = None, reasoning: int | None = None) -> dict[str, Any]:
        """Cumulative usage (§4.7); ``output``/``reasoning`` override the counters (branch 1)."""
        output = self.output_tokens if output is None else output
        reasoning = self.reasoning_tokens if reasoning is None else reasoning
        out_details: dict[str, int] = {"text_tokens": output}
        if reasoning:
            out_details["reasoning_tokens"] = reasoning
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": output,
            "characters": 0,
            "total_tokens": self.input_tokens + output,
            "input_tokens_details": {"text_tokens": self.input_tokens},
            "output_tokens_details": out_details,
            "cached_tokens": 0,
        }


class _StreamBody:
    """WSGI body iterator whose ``close()`` tells the fake how the stream ended."""

    def __init__(self, gen: Iterator[bytes], on_close: Callable[[], None]) -> None:
        self._gen = gen
        self._on_close = on_close

    def __iter__(self) -> _StreamBody:
        return self

    def __next__(self) -> bytes:
        return next(self._gen)

    def close(self) -> None:
        try:
            self._gen.close()  # type: ignore[attr-defined]
        finally:
            self._on_close()


class FakeQwen(Site2026Mixin):
    """A chat.qwen.ai look-alike; set the public attributes to steer it from a test.

    Knobs: ``chunk_delay`` (s between SSE events, read live), ``hostile`` (one of
    ``HOSTILE_MODES`` or None) with ``hostile_times`` (None = always, N = next N requests)
    and ``hostile_after`` (deltas before a truncate/stream_error cut),
    ``stream_error_payload``, ``quota`` (token → completions left), ``rate_limit_hours``,
    ``revoked`` (tokens), ``answer`` (user text → answer text), ``info_events`` (send a
    ``response.info`` keep-alive after ``response.created``), ``split_events`` (write each
    event in two pieces, cut inside the first multi-byte character), ``captcha_body_limit``,
    ``thinking_style`` ("think" | "summary"), ``image_base_url``, ``search_docs``.
    ``inject`` ((token, path) → ``INJECTABLE`` kind or None: an account-level failure on
    ``chats/new`` and completions, checked right after auth), ``signin_page_local_storage``.
    Records: ``requests``, ``completed``, ``aborted``, ``chats``, ``users``, ``errors``.
    The 2026 switches are listed in the module docstring and ``docs/QWEN_2026.md``.
    """

    INVALID_CREDENTIALS = INVALID_CREDENTIALS

    def __init__(self, *, chunk_delay: float = 0.0, models: list[str] | None = None) -> None:
        self.chunk_delay = chunk_delay
        self.keep_alive: bool = True  # persistent HTTP/1.1 connections (read by ``start``)
        self.clock: Callable[[], float] = time.time  # token issue and expiry (tests move it with the gateway's)
        self.models: list[str] = list(models) if models is not None else list(DEFAULT_MODELS)
        self.hostile: str | None = None
        self.hostile_times: int | None = None  # None: every request; N: the next N, then off
        self.hostile_after: int = 3  # deltas sent before "truncate" / "stream_error" cut in
        self.stream_error_payload: dict[str, str] = {
            "code": "Internal_Server_Error",
            "details": "Internal error occurred",
        }
        self.quota: dict[str, int] = {}
        self.rate_limit_hours: int = 19
        self.revoked: set[str] = set()
        self.answer: Callable[[str], str] | None = None
        self.thinking_style: str = "think"  # "think" (2025) or "summary" (2026 thinking_summary)
        self.image_base_url: str = "https://cdn.qwenlm.ai"
        self.search_docs: list[dict[str, str]] | None = None  # None: two made-up results
        self.info_events: bool = False
        self.split_events: bool = False
        self.captcha_body_limit: int | None = 128 * 1024
        self.antibot: bool = False  # API calls need the cookie the site page's script sets
        self.antibot_refused: int = 0
        self.pages_served: int = 0
        self._antibot_nonces: set[str] = set()
        self.baxia_ready_after: float | None = None  # the page's anti-bot module: ready after N s
        self.frontend_version: str | None = None  # the page's front-end config carries this version
        self.inject: Callable[[str, str], str | None] | None = None
        self.signin_page_local_storage: bool = True
        self.requests: list[dict[str, Any]] = []
        self.completed: list[str] = []
        self.aborted: list[str] = []
        self.errors: list[str] = []  # tracebacks of crashes inside the fake itself
        self.chats: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, str]] = {}  # email -> {"id", "password_sha256", "name"}
        self.oss: Any = None  # a tests.fakes.oss.FakeOSS; grants the credentials STS hands out
        self.sts_versions: set[str] = {"v1", "v2"}
        self.sts_v1_enveloped: bool = False
        self.files: dict[str, dict[str, Any]] = {}  # file_id -> {"owner", "file_path", ...}
        self.parse_polls: int = 1  # "parsing" answers before parse_result
        self.parse_result: str = "success"
        # 2026 site (module docstring, docs/QWEN_2026.md); off unless noted
        self.require_2026_body: bool = False  # completions / chats/new bodies as the 2026 front end
        self.body_errors: list[str] = []  # the field each refused 2026 body failed on
        self.require_token_cookie: bool = False  # only the ``token`` cookie authenticates
        self.delta_response_ids: bool = False  # top-level response_id + timestamp on every delta
        self.wall_after_frames: int = 0  # frames before a captcha_frame/html_* wall (0: first)
        self.stream_wall_ret: list[str] = ["FAIL_SYS_USER_VALIDATE::哎哟喂,被挤爆啦,请稍后重试"]
        self.walls: list[str] = []  # every wall served, by kind (captcha, body_limit, captcha_frame, ...)
        self.parallel_answers: str | None = None  # one of PARALLEL_MODES
        self.parallel_alt_answer: Callable[[str], str] | None = None  # branch "1" text (default: same)
        self.parallel_turns: list[dict[str, Any]] = []
        self.keep_open_after_finished: bool = False
        self.keep_open_seconds: float = 30.0
        self.held_open: list[dict[str, Any]] = []  # {"response_id", "client_closed", "seconds"}
        self.abandon_keeps_generating: bool = False
        self.abandon_seconds: float | None = None  # None: an abandoned chat stays busy until stopped
        self.stop_calls: list[dict[str, Any]] = []
        self.check_documents: bool = False  # document files must be this user's, parsed
        self.documents: list[dict[str, Any]] = []  # every file_class "document" attached to a turn
        self.image_edits: list[dict[str, Any]] = []
        self._timers: list[threading.Timer] = []
        self._init_2026()
        self.url: str = ""
        self.secret: bytes = secrets.token_bytes(32)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: BackgroundServer | None = None
        self._url_map = Map(
            [
                Rule("/api/models", endpoint="models", methods=["GET"]),
                Rule("/api/v2/chats/new", endpoint="chats_new", methods=["POST"]),
                Rule("/api/v2/chats/", endpoint="chats_list", methods=["GET"]),
                Rule("/api/v2/chats/<chat_id>", endpoint="chat_get", methods=["GET"]),
                Rule("/api/v2/chats/<chat_id>", endpoint="chat_delete", methods=["DELETE"]),
                Rule("/api/v2/chat/completions", endpoint="completions", methods=["POST"]),
                Rule("/api/chat/completions", endpoint="legacy_completions", methods=["POST"]),
                Rule("/api/v1/auths/signin", endpoint="signin", methods=["POST"]),
                Rule("/api/v1/auths/", endpoint="session", methods=["GET"]),
                Rule("/api/v2/users/status", endpoint="user_status", methods=["GET"]),
                Rule("/", endpoint="site_page", methods=["GET"]),
                Rule("/c/<chat_id>", endpoint="site_page", methods=["GET"]),
                Rule("/output/<path:rest>", endpoint="image_file", methods=["GET"]),
                Rule("/auth", endpoint="auth_page", methods=["GET"]),
                Rule("/api/v1/files/getstsToken", endpoint="sts_v1", methods=["POST"]),
                Rule("/api/v2/files/getstsToken", endpoint="sts_v2", methods=["POST"]),
                Rule("/api/v2/files/parse", endpoint="files_parse", methods=["POST"]),
                Rule("/api/v2/files/parse/status", endpoint="files_parse_status", methods=["POST"]),
                # 2026
                Rule("/api/v2/models/", endpoint="models_v2", methods=["GET"], strict_slashes=False),
                Rule("/api/v2/chat/completions/stop", endpoint="completions_stop", methods=["POST"]),
                Rule("/api/v2/auths/signin", endpoint="signin_v2", methods=["POST"]),
                Rule("/api/v2/auths/refresh", endpoint="refresh", methods=["POST"]),
                Rule("/api/v2/users/user/settings/update", endpoint="settings_update", methods=["POST"]),
                Rule("/api/v2/users/user/entitlement_quota", endpoint="entitlement_quota", methods=["POST"]),
                Rule("/api/v1/tasks/status/<task_id>", endpoint="task_status", methods=["GET"]),
            ]
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> FakeQwen:
        """Bind 127.0.0.1 (a free port unless given) and serve in a daemon thread."""
        self._stopping.clear()
        self._server = BackgroundServer(self._wsgi, port=port, name="fake-qwen", keep_alive=self.keep_alive)
        self.url = self._server.url
        return self

    @property
    def connections(self) -> int:
        """TCP connections accepted since ``start`` (a client that reuses them opens few)."""
        return self._server.accepted if self._server is not None else 0

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def use_2026_site(self) -> Self:
        """The 2026 front end's defaults in one call: the 2026 model list, the 2.1 body check,
        ids on every delta and summary thinking. Walls, guest mode, parallel answers and the
        account switches stay as they are."""
        self.models = list(MODELS_2026)
        self.require_2026_body = True
        self.delta_response_ids = True
        self.thinking_style = "summary"
        return self

    def last_request(self, path: str) -> dict[str, Any] | None:
        """The newest recorded request to ``path`` (method, query, headers, json), if any."""
        with self._lock:
            return next((r for r in reversed(self.requests) if r["path"] == path), None)

    # ------------------------------------------------------------------ tokens and users

    def make_token(self, *, user_id: str | None = None, expires_in: int = 7 * 86400, expired: bool = False) -> str:
        """An HS256 JWT as chat.qwen.ai issues them (§2.3), signed with this fake's secret."""
        now = int(self.clock())
        payload = {
            "id": user_id or _new_id(),
            "last_password_change": now - 30 * 86400,
            "exp": now - 3600 if expired else now + expires_in,
        }
        header = {"alg": "HS256", "typ": "JWT"}
        signing_input = f"{_b64url(_compact(header))}.{_b64url(_compact(payload))}"
        signature = hmac.new(self.secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        return issued(f"{signing_input}.{_b64url(signature)}")

    def add_user(self, email: str, password: str) -> str:
        """Register an account for ``/api/v1/auths/signin``; returns a fresh token for it."""
        user_id = _new_id()
        issued(password)
        with self._lock:
            self.users[email.lower()] = {
                "id": user_id,
                "email": email,
                "password_sha256": hashlib.sha256(password.encode("utf-8")).hexdigest(),
                "name": email.split("@")[0],
            }
        return self.make_token(user_id=user_id)

    def _decode_token(self, token: str) -> dict[str, Any] | None:
        """The payload of a well-signed, unexpired, unrevoked token, else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_b64url_decode(parts[0]))
            payload = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            return None
        expected = hmac.new(self.secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            return None
        exp = payload.get("exp")
        if not isinstance(exp, int) or exp <= self.clock():
            return None
        with self._lock:
            if token in self.revoked:
                return None
        return payload

    def _presented_token(self, request: Request) -> str | None:
        if not self.require_token_cookie:
            auth = request.headers.get("Authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return request.cookies.get("token") or None

    @staticmethod
    def _guest_id(request: Request) -> str:
        """A guest is known by the ``cna`` cookie the site page sets (2026 §5)."""
        return "guest:" + (request.cookies.get("cna") or "anonymous")

    def _identify(self, request: Request, body: Any) -> tuple[str, dict[str, Any]] | None:
        """(token, payload) of an account, or ("", guest payload) for a guest request."""
        auth = self._authenticate(request)
        if auth is not None:
            return auth
        if self.guest_mode and isinstance(body, dict) and body.get("chat_mode") == "guest":
            return "", {"id": self._guest_id(request), "guest": True}
        return None

    def _authenticate(self, request: Request) -> tuple[str, dict[str, Any]] | None:
        token = self._presented_token(request)
        if token is None:
            return None
        payload = self._decode_token(token)
        return None if payload is None else (token, payload)

    # ------------------------------------------------------------------ envelopes

    @staticmethod
    def _ok(data: Any) -> Response:
        return _json_response({"success": True, "request_id": _new_id(), "data": data})

    @staticmethod
    def _fail(code: str, details: str, **extra: Any) -> Response:
        data = {"code": code, "details": details, **extra}
        return _json_response({"success": False, "request_id": _new_id(), "data": data})

    def _unauthorized(self) -> Response:
        return self._fail("unauthorized", EXPIRED_DETAILS)

    def _injected(self, token: str, path: str) -> Response | None:
        """The ``inject`` knob: the account-level failure a test chose for this request."""
        kind = self.inject(token, path) if self.inject is not None else None
        if kind is None:
            return None
        if kind == "rate_limited":
            return self._fail(
                "RateLimited", RATE_LIMIT_DETAILS, template=RATE_LIMIT_TEMPLATE, num=self.rate_limit_hours
            )
        if kind == "unauthorized":
            return self._unauthorized()
        if kind in ("http_401", "http_403", "http_429"):
            return _json_response({"detail": f"injected {kind}"}, status=int(kind[5:]))
        raise ValueError(f"unknown injected failure {kind!r}")

    def _take_hostile(self, kinds: tuple[str, ...]) -> str | None:
        """The hostile mode to apply to this request (counting down ``hostile_times``)."""
        with self._lock:
            mode = self.hostile
            if mode not in kinds:
                return None
            if self.hostile_times is not None:
                self.hostile_times -= 1
                if self.hostile_times <= 0:
                    self.hostile = None
                    self.hostile_times = None
            return mode

    @staticmethod
    def _punish_url(path: str) -> str:
        """The slider URL of a captcha answer (double slash as captured, §3.0)."""
        x5secdata = secrets.token_hex(120)
        return (
            f"https://chat.qwen.ai:443/{path}/_____tmd_____/punish"
            f"?x5secdata={x5secdata}&x5step=2&action=captcha&pureCaptcha="
        )

    @staticmethod
    def _captcha(request: Request) -> Response:
        body = {
            "ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试"],
            "data": {"url": FakeQwen._punish_url(request.path)},
        }
        return _json_response(body)

    @staticmethod
    def _waf_html() -> str:
        aa = secrets.token_hex(16)
        return (
            '<!doctypehtml><html><head><meta charset="utf-8">'
            f'<meta name="aliyun_waf_aa" content="{aa}">'
            f'<meta name="aliyun_waf_bb" content="{secrets.token_hex(16)}">'
            "<title></title></head><body><script>"
            "var arg1='" + secrets.token_hex(20) + "';"
            "setTimeout(function(){location.reload()},1000);"
            "</script></body></html>"
        )

    @staticmethod
    def _waf() -> Response:
        response = Response(FakeQwen._waf_html(), content_type="text/html; charset=utf-8")
        response.set_cookie("acw_tc", secrets.token_hex(16), max_age=1500, httponly=True)
        return response

    @staticmethod
    def _actual_status(code: int) -> Response:
        """2026 §4: an HTTP 200 whose ``x-actual-status-code`` says 404/403, tiny JSON body."""
        message = "Not Found" if code == 404 else "Forbidden"
        return _json_response(
            {"success": False, "code": code, "message": message},
            headers={"x-actual-status-code": str(code)},
        )

    @staticmethod
    def _actual_404() -> Response:
        return FakeQwen._actual_status(404)

    def _note_wall(self, kind: str) -> None:
        with self._lock:
            self.walls.append(kind)

    def _guard(self, request: Request) -> Response | None:
        """The anti-bot layer in front of chats/new and completions (§3.0, 2026 §2/§4)."""
        limit = self.captcha_body_limit
        if limit is not None and len(request.get_data(cache=True)) > limit:
            self._note_wall("body_limit")
            return self._captcha(request)
        mode = self._take_hostile(("captcha", "waf", "actual_status_404", "actual_status_403"))
        if mode is not None:
            self._note_wall(mode)
        if mode == "captcha":
            return self._captcha(request)
        if mode == "waf":
            return self._waf()
        if mode in ("actual_status_404", "actual_status_403"):
            return self._actual_status(int(mode[-3:]))
        return None

    # ------------------------------------------------------------------ anti-bot mode

    @staticmethod
    def antibot_checksum(nonce: str) -> str:
        """What the page's script computes: a 32-bit string hash of the nonce, in hex."""
        h = 0
        for ch in nonce:
            h = (h * 31 + ord(ch)) & 0xFFFFFFFF
        return format(h, "x")

    def _antibot_blocks(self, request: Request) -> bool:
        path = request.path
        if not (path == "/api/models" or path.startswith("/api/v2/")):
            return False
        nonce, _, checksum = (request.cookies.get("ssxmod_itna") or "").partition(".")
        with self._lock:
            issued = nonce in self._antibot_nonces
            if issued and checksum == self.antibot_checksum(nonce):
                return False
            self.antibot_refused += 1
        return True

    def _ep_site_page(self, request: Request, body: Any, chat_id: str | None = None) -> Response:
        """The chat page: its script sets the fingerprint cookie the anti-bot mode checks."""
        nonce = secrets.token_hex(8)
        with self._lock:
            self._antibot_nonces.add(nonce)
            self.pages_served += 1
        html = (
            '<!doctype html><html><head><meta charset="utf-8"><title>Qwen Chat</title><script>'
            "(function(){var n='" + nonce + "',h=0;"
            "for(var i=0;i<n.length;i++){h=(Math.imul(h,31)+n.charCodeAt(i))>>>0;}"
            "document.cookie='ssxmod_itna='+n+'.'+h.toString(16)+'; path=/; max-age=900; SameSite=Lax';"
            "})();</script>" + self._frontend_config() + self._baxia_script(nonce) + "</head>"
            '<body><div id="root">Qwen Chat (fake)</div></body></html>'
        )
        response = Response(html, content_type="text/html; charset=utf-8")
        if not request.cookies.get("cna"):  # the device cookie a guest is known by (2026 §5)
            response.set_cookie("cna", secrets.token_urlsafe(18), max_age=365 * 86400, path="/")
        return response

    def _frontend_config(self) -> str:
        """The front end's config with its own version (``frontend_version``; 2026 §2: the
        page's ``version`` header). Where the real bundle keeps it is not known: the fake's
        ``window.__APP_CONFIG__`` is the default of ``BROWSER_PAGE_VERSION_PATH`` *[choice]*."""
        if self.frontend_version is None:
            return ""
        return "<script>window.__APP_CONFIG__=" + json.dumps({"version": self.frontend_version}) + ";</script>"

    def _baxia_script(self, nonce: str) -> str:
        """The anti-bot module (``baxia_ready_after``): a uid token after a delay, then it signs
        the page's ``fetch`` calls."""
        after = self.baxia_ready_after
        if after is None:
            return ""
        ready = "" if after == float("inf") else f"setTimeout(function(){{ready=true;}},{int(after * 1000)});"
        return (
            "<script>(function(){var ready=false,token='T2gA" + nonce + "',f=window.fetch;"
            "window.__baxia__={getFYModule:function(){return {getUidToken:function(){return ready?token:'';}};}};"
            "window.fetch=function(u,o){if(ready){o=Object.assign({},o||{});var h=new Headers(o.headers||{});"
            "h.set('bx-umidtoken',token);o.headers=h;}return f.call(this,u,o);};" + ready + "})();</script>"
        )

    # ------------------------------------------------------------------ WSGI

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        body_json = self._record(request)
        try:
            endpoint, args = self._url_map.bind_to_environ(environ).match()
            handler = getattr(self, f"_ep_{endpoint}")
            if self.antibot and self._antibot_blocks(request):
                response = self._captcha(request)
            else:
                response = handler(request, body_json, **args)
        except NotFound:
            response = _json_response({"detail": "Not Found"}, status=404)
        except MethodNotAllowed:
            response = _json_response({"detail": "Method Not Allowed"}, status=405)
        except HTTPException as exc:
            response = exc.get_response(environ)
        except Exception:  # noqa: BLE001 - a crash in the fake must be visible to tests
            with self._lock:
                self.errors.append(traceback.format_exc())
            response = _json_response({"detail": "Internal Server Error"}, status=500)
        return response(environ, start_response)

    def _record(self, request: Request) -> Any:
        raw = request.get_data(cache=True)
        try:
            body_json = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body_json = None
        entry = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.args),
            "headers": _HeaderDict((k.lower(), v) for k, v in request.headers.items()),
            "json": body_json,
            "time": time.time(),
        }
        with self._lock:
            self.requests.append(entry)
        return body_json

    # ------------------------------------------------------------------ endpoints

    def _model_entry(self, model_id: str, *, v2: bool = False) -> dict[str, Any]:
        """One model of ``/api/models`` (§3.3); ``v2`` adds the 2026 fields (2026 §1)."""
        default = (model_id, False, 131072, False)
        name, thinking, context, vision = _MODEL_TABLE.get(model_id, default)
        locked = model_id in self.thinking_locked_models
        capabilities = {
            "document": True,
            "vision": vision,
            "video": vision,
            "audio": vision,
            "citations": True,
        }
        if thinking:
            capabilities.update({"thinking_budget": True, "thinking": True})
        meta: dict[str, Any] = {
            "profile_image_url": "/static/favicon.png",
            "description": f"{name} is a model of the Qwen series.",
            "short_description": name,
            "capabilities": capabilities,
            "max_context_length": context,
        }
        if thinking:
            meta["max_thinking_generation_length"] = 81920
            meta["max_summary_generation_length"] = 8192
        else:
            meta["max_generation_length"] = 8192
        meta["abilities"] = {key: int(value) for key, value in capabilities.items()}
        meta["abilities"]["mcp"] = 1
        if locked and thinking:
            meta["abilities"]["thinking"] = 4  # "active, uncancellable" (2026 §1)
        meta["chat_type"] = ["t2t", "t2v", "t2i", "search", "artifacts", "web_dev", "deep_research"]
        if model_id in _MODELS_2026_SET:
            meta["chat_type"] = list(_CHAT_TYPES_2026)
        if v2 or model_id in _MODELS_2026_SET:
            meta["think_skip"] = {"enable": not locked}
        if v2:
            meta["supports_non_streaming"] = False  # the 2026-08 capture says so for every model
        meta["mcp"] = ["image-generation", "code-interpreter", "amap", "fire-crawl"]
        meta["modality"] = ["text"]
        if model_id in ("qwq-32b", "qvq-72b-preview-0310"):
            meta["is_single_round"] = 1
        if model_id == "qwen2.5-omni-7b":
            meta["file_limits"] = {
                "image_max_size": 10,
                "image_max_count": 5,
                "video_max_size": 150,
                "video_max_count": 1,
                "audio_max_size": 100,
                "audio_max_count": 1,
                "doc_max_size": 20,
                "doc_max_count": 1,
            }
        return {
            "id": model_id,
            "name": name,
            "object": "model",
            "owned_by": "openai",
            "info": {
                "id": model_id,
                "user_id": _MODEL_USER_ID,
                "base_model_id": None,
                "name": name,
                "meta": meta,
                "access_control": None,
                "is_active": True,
                "is_visitor_active": True,
                "updated_at": _MODEL_CREATED_AT,
                "created_at": _MODEL_CREATED_AT,
            },
            "preset": True,
            "action_ids": [],
        }

    def _ep_models(self, request: Request, body: Any) -> Response:
        return _json_response({"data": [self._model_entry(m) for m in self._visible_models(request)]})

    def _ep_legacy_completions(self, request: Request, body: Any) -> Response:
        html = (
            "<html><head><title>504 Gateway Time-out</title></head><body>"
            "<center><h1>504 Gateway Time-out</h1></center><hr><center>alibaba-ga</center>"
            "</body></html>"
        )
        return Response(html, status=504, content_type="text/html")

    def _session_info(self, token: str, payload: dict[str, Any]) -> dict[str, Any]:
        user_id = payload["id"]
        with self._lock:
            user = next((u for u in self.users.values() if u["id"] == user_id), None)
        email = user["email"] if user else f"{user_id[:8]}@fake.qwen.local"
        return {
            "id": user_id,
            "email": email,
            "name": user["name"] if user else email.split("@")[0],
            "role": "user",
            "profile_image_url": "/user.png",
            "token": token,
            "token_type": "Bearer",
            "expires_at": payload["exp"],
            "permissions": {"chat": {"file_upload": True, "delete": True, "edit": True}},
        }

    def _ep_signin(self, request: Request, body: Any) -> Response:
        with self._lock:
            self.signin_calls.append("v1")
        if self.signin_v1_status is not None:  # 2026 §5: v1 answered 405 for some
            detail = "Method Not Allowed" if self.signin_v1_status == 405 else "Error"
            return _json_response({"detail": detail}, status=self.signin_v1_status)
        if not (
            isinstance(body, dict) and isinstance(body.get("email"), str) and isinstance(body.get("password"), str)
        ):
            detail = [{"type": "missing", "loc": ["body"], "msg": "Field required"}]
            return _json_response({"detail": detail}, status=422)
        with self._lock:
            user = self.users.get(body["email"].lower())
        if user is None or not hmac.compare_digest(body["password"].lower(), user["password_sha256"]):
            return _json_response({"detail": INVALID_CREDENTIALS}, status=401)
        token = self.make_token(user_id=user["id"], expires_in=self.token_lifetime)
        payload = self._decode_token(token)
        assert payload is not None
        response = _json_response(self._session_info(token, payload))
        response.set_cookie("token", token, expires=payload["exp"], httponly=True, samesite="Lax", path="/")
        return response

    def _ep_auth_page(self, request: Request, body: Any) -> Response:
        store = "true" if self.signin_page_local_storage else "false"
        return Response(SIGNIN_PAGE.replace("__STORE_LOCAL__", store), content_type="text/html; charset=utf-8")

    def _ep_session(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        return _json_response(self._session_info(*auth))

    def _ep_user_status(self, request: Request, body: Any) -> Response:
        if self._authenticate(request) is None:
            return self._unauthorized()
        return self._ok(True)

    def _allowed_models(self, payload: dict[str, Any]) -> list[str]:
        return self._guest_model_list() if payload.get("guest") else self.models

    def _refuse_2026_body(self, field: str) -> Response:
        with self._lock:
            self.body_errors.append(field)
        return self._fail("Bad_Request", f"Invalid input: {field}")

    def _ep_chats_new(self, request: Request, body: Any) -> Response:
        blocked = self._guard(request)
        if blocked is not None:
            return blocked
        auth = self._identify(request, body)
        if auth is None:
            return self._unauthorized()
        injected = self._injected(auth[0], request.path)
        if injected is not None:
            return injected
        if not isinstance(body, dict):
            return self._fail("Bad_Request", "Invalid input")
        if self.require_2026_body:  # 2026 §2: {chatId, models, project_id, timestamp, chat_type, chat_mode}
            if "title" in body:
                return self._refuse_2026_body("title")
            if body.get("chat_mode") not in CHAT_MODES_2026:
                return self._refuse_2026_body("chat_mode")
        models = body.get("models")
        if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
            return self._fail("Bad_Request", "Invalid input: models")
        if any(m not in self._allowed_models(auth[1]) for m in models):
            return self._fail("Not_Found", MODEL_NOT_FOUND)
        if body.get("chat_mode") not in CHAT_MODES:
            return self._fail("Bad_Request", "Invalid input: chat_mode")
        if body.get("chat_type") not in CHAT_TYPES:
            return self._fail("Bad_Request", "Invalid input: chat_type")
        stamp = body.get("timestamp")
        if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 10**12:
            return self._fail("Bad_Request", "Invalid input: timestamp")
        title = body.get("title")
        chat_id = _new_id()
        now = int(time.time())
        with self._lock:
            self.chats[chat_id] = {
                "owner": auth[1]["id"],
                "model": models[0],
                "models": list(models),
                "title": title if isinstance(title, str) and title else "New Chat",
                "chat_type": body["chat_type"],
                "chat_mode": body["chat_mode"],
                "guest": bool(auth[1].get("guest")),
                "messages": [],
                "in_progress": False,
                "last_response_id": None,
                "turn": None,
                "created_at": now,
                "updated_at": now,
            }
        return self._ok({"id": chat_id})

    def _owned_chat(self, chat_id: str, user_id: str) -> dict[str, Any] | None:
        chat = self.chats.get(chat_id)
        return chat if chat is not None and chat["owner"] == user_id else None

    def _ep_chats_list(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        page = request.args.get("page", 1, type=int) or 1
        with self._lock:
            mine = [
                {
                    "id": cid,
                    "title": chat["title"],
                    "updated_at": chat["updated_at"],
                    "created_at": chat["created_at"],
                    "chat_type": chat["chat_type"],
                }
                for cid, chat in self.chats.items()
                if chat["owner"] == auth[1]["id"]
            ]
        mine.sort(key=lambda c: c["updated_at"], reverse=True)
        size = request.args.get("limit", 20, type=int) or 20
        return self._ok(mine[(page - 1) * size : page * size])

    def _ep_chat_get(self, request: Request, body: Any, chat_id: str) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        with self._lock:
            chat = self._owned_chat(chat_id, auth[1]["id"])
            if chat is None:
                return self._fail("Not_Found", CHAT_NOT_FOUND)
            for m in chat["messages"]:
                self._sync_text(m)
            messages = [dict(m) for m in chat["messages"]]
            snapshot = {k: v for k, v in chat.items() if k != "messages"}
        history: dict[str, dict[str, Any]] = {}
        for msg in messages:
            history[msg["id"]] = {
                "id": msg["id"],
                "parentId": msg["parent_id"],
                "childrenIds": [m["id"] for m in messages if m["parent_id"] == msg["id"]],
                "role": msg["role"],
                "content": msg["content"],
                "timestamp": msg["timestamp"],
                "models": [msg["model"]],
                "done": msg.get("status", "finished") != "typing",
            }
        current = messages[-1]["id"] if messages else None
        data = {
            "id": chat_id,
            "user_id": snapshot["owner"],
            "title": snapshot["title"],
            "chat": {
                "id": "",
                "title": snapshot["title"],
                "models": snapshot["models"],
                "history": {"messages": history, "currentId": current},
                "messages": list(history.values()),
                "timestamp": snapshot["created_at"] * 1000,
            },
            "currentId": current,
            "updated_at": snapshot["updated_at"],
            "created_at": snapshot["created_at"],
            "share_id": None,
            "archived": False,
            "pinned": False,
            "meta": {},
            "folder_id": None,
            "chat_type": snapshot["chat_type"],
        }
        return self._ok(data)

    def _ep_chat_delete(self, request: Request, body: Any, chat_id: str) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        with self._lock:
            if self._owned_chat(chat_id, auth[1]["id"]) is None:
                return self._fail("Not_Found", CHAT_NOT_FOUND)
            del self.chats[chat_id]
        return self._ok(True)

    # ------------------------------------------------------------------ files (§5)

    def _ep_sts_v1(self, request: Request, body: Any) -> Response:
        return self._sts(request, body, "v1")

    def _ep_sts_v2(self, request: Request, body: Any) -> Response:
        return self._sts(request, body, "v2")

    def _sts(self, request: Request, body: Any, version: str) -> Response:
        if version not in self.sts_versions:
            return _json_response({"detail": "Not Found"}, status=404)
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        if not isinstance(body, dict):
            return self._fail("Bad_Request", "Invalid input")
        filename, filesize, filetype = body.get("filename"), body.get("filesize"), body.get("filetype")
        if not isinstance(filename, str) or not filename or "/" in filename:
            return self._fail("Bad_Request", "Invalid input: filename")
        if isinstance(filesize, str) and filesize.isdigit():
            filesize = int(filesize)
        if not isinstance(filesize, int) or isinstance(filesize, bool) or filesize <= 0:
            return self._fail("Bad_Request", "Invalid input: filesize")
        if not isinstance(filetype, str) or not filetype:
            return self._fail("Bad_Request", "Invalid input: filetype")
        file_id = _new_id()
        file_path = f"{auth[1]['id']}/{file_id}_{filename}"
        bucket = self.oss.bucket if self.oss is not None else "qwen-webui-prod"
        if self.oss is not None:
            grant = self.oss.grant(file_path)
            creds = (grant.access_key_id, grant.secret, grant.token)
            file_url = self.oss.presign(file_path)
        else:
            creds = (
                "STS." + secrets.token_urlsafe(18),
                issued(secrets.token_urlsafe(30)),
                issued("CAIS" + secrets.token_urlsafe(90)),
            )
            file_url = f"https://{bucket}.oss-accelerate.aliyuncs.com/{file_path}?x-oss-expires=300"
        with self._lock:
            self.files[file_id] = {
                "owner": auth[1]["id"],
                "file_path": file_path,
                "filename": filename,
                "filesize": filesize,
                "filetype": filetype,
                "parse": None,
                "polls_left": 0,
            }
        data = {
            "access_key_id": creds[0],
            "access_key_secret": creds[1],
            "security_token": creds[2],
            "file_url": file_url,
            "file_path": file_path,
            "file_id": file_id,
            "bucketname": bucket,
            "region": "ap-southeast-1" if version == "v2" else "oss-ap-southeast-1",
            "endpoint": "oss-accelerate.aliyuncs.com",
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900)),
        }
        if version == "v2" or self.sts_v1_enveloped:
            return self._ok(data)
        return _json_response(data)

    def _own_file(self, file_id: Any, user_id: str) -> dict[str, Any] | None:
        entry = self.files.get(file_id) if isinstance(file_id, str) else None
        return entry if entry is not None and entry["owner"] == user_id else None

    def _ep_files_parse(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        file_id = body.get("file_id") if isinstance(body, dict) else None
        with self._lock:
            entry = self._own_file(file_id, auth[1]["id"])
            if entry is None:
                return self._fail("Not_Found", "File not found")
            entry["parse"] = "parsing"
            entry["polls_left"] = self.parse_polls
        return _json_response({"success": True, "request_id": _new_id()})

    def _ep_files_parse_status(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None:
            return self._unauthorized()
        ids = body.get("file_id_list") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            return self._fail("Bad_Request", "Invalid input: file_id_list")
        out = []
        with self._lock:
            for file_id in ids:
                entry = self._own_file(file_id, auth[1]["id"])
                if entry is None or entry["parse"] is None:
                    return self._fail("Not_Found", "File not found")
                if entry["parse"] == "parsing":
                    if entry["polls_left"] > 0:
                        entry["polls_left"] -= 1
                    else:
                        entry["parse"] = self.parse_result
                out.append({"file_id": file_id, "status": entry["parse"]})
        return self._ok(out)

    # ------------------------------------------------------------------ completions

    def _check_2026_completion(self, body: dict[str, Any], message: dict[str, Any]) -> str | None:
        """The first field where a completions body differs from the 2026 front end's (2026 §2)."""
        if body.get("version") != "2.1":
            return "version"
        if body.get("chatId") != body.get("chat_id"):
            return "chatId"
        if "parentId" not in body or "parent_id" not in body:
            return "parentId"
        if (body.get("parentId") or None) != (body.get("parent_id") or None):  # "" and null both mean none
            return "parentId"
        stamp = body.get("timestamp")
        if not _is_int(stamp) or stamp < 10**12:
            return "timestamp"
        features = message.get("feature_config")
        checks = (
            ("messages[0].user_action", message.get("user_action") == "chat"),
            ("messages[0].files", isinstance(message.get("files"), list)),
            ("messages[0].timestamp", _is_int(message.get("timestamp"))),
            ("messages[0].models", message.get("models") == [body.get("model")]),
            ("messages[0].chat_type", isinstance(message.get("chat_type"), str)),
            ("messages[0].sub_chat_type", isinstance(message.get("sub_chat_type"), str)),
            ("messages[0].childrenIds", isinstance(message.get("childrenIds"), list)),
            ("messages[0].extra.meta.subChatType", isinstance(_dig(message, "extra", "meta", "subChatType"), str)),
            (
                "messages[0].feature_config.thinking_enabled",
                isinstance(features, dict) and isinstance(features.get("thinking_enabled"), bool),
            ),
        )
        return next((name for name, ok in checks if not ok), None)

    def _object_text(self, path: str | None) -> str | None:
        """The text of an uploaded object, read back from the attached fake OSS."""
        if path is None or self.oss is None:
            return None
        obj = self.oss.objects.get(path)
        return None if obj is None else obj["data"].decode("utf-8", "replace")

    def _documents(self, files: list[Any], user_id: str) -> list[dict[str, Any]]:
        """The ``file_class: "document"`` entries of a message, resolved against uploads (2026 §2)."""
        out = []
        for item in files:
            if not isinstance(item, dict) or item.get("file_class") != "document":
                continue
            with self._lock:
                entry = self._own_file(item.get("id"), user_id)
                parse = entry["parse"] if entry else None
                path = entry["file_path"] if entry else None
            problem = None
            if entry is None:
                problem = "not an upload of this user"
            elif parse != "success":
                problem = f"parse status {parse}"
            out.append(
                {
                    "id": item.get("id"),
                    "name": item.get("name"),
                    "known": entry is not None,
                    "parse": parse,
                    "text": self._object_text(path),
                    "problem": problem,
                    "descriptor": item,
                }
            )
        return out

    def _ep_completions(self, request: Request, body: Any) -> Response:
        blocked = self._guard(request)
        if blocked is not None:
            return blocked
        auth = self._identify(request, body)
        if auth is None:
            return self._unauthorized()
        token, payload = auth
        injected = self._injected(token, request.path)
        if injected is not None:
            return injected
        if not isinstance(body, dict):
            return self._fail("Bad_Request", "Invalid input")
        chat_id = request.args.get("chat_id")
        if not chat_id or body.get("chat_id") != chat_id:
            return self._fail("Bad_Request", "Invalid input: chat_id")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._fail("Bad_Request", "Invalid input: messages")
        if len(messages) > 1:
            return self._fail("Bad_Request", TOO_MANY_MESSAGES)
        message = messages[0]
        if not isinstance(message, dict) or message.get("role") != "user":
            return self._fail("Bad_Request", "Invalid input: messages")
        if self.require_2026_body:
            field_name = self._check_2026_completion(body, message)
            if field_name is not None:
                return self._refuse_2026_body(field_name)
        model = body.get("model")
        if not isinstance(model, str) or model not in self._allowed_models(payload):
            return self._fail("Not_Found", MODEL_NOT_FOUND)
        stream = body.get("stream", True)
        feature_config = message.get("feature_config")
        if not isinstance(feature_config, dict):
            feature_config = {}
        if model in self.thinking_locked_models and feature_config.get("thinking_enabled") is not True:
            return self._fail("invalid_input", THINKING_LOCKED_DETAILS)  # 2026 §1
        text = message_text(message.get("content"))
        chat_type = message.get("chat_type", "t2t")
        if chat_type not in CHAT_TYPES:
            return self._fail("Bad_Request", "Invalid input: chat_type")
        files = message.get("files") or []
        if not isinstance(files, list):
            return self._fail("Bad_Request", "Invalid input: files")
        images = [f["url"] for f in files if isinstance(f, dict) and f.get("type") == "image" and f.get("url")]
        if chat_type == "image_edit" and not images:
            return self._fail("Bad_Request", "Invalid input: image_edit needs an image in files")
        documents = self._documents(files, payload["id"])
        if self.check_documents and any(d["problem"] for d in documents):
            return self._fail("Bad_Request", "Invalid input: files")
        phases = self._phases(text, chat_type, feature_config, body.get("size"), payload["id"])
        parallel = self.parallel_answers if stream is not False and chat_type in ("t2t", "search") else None
        if parallel not in (None, *PARALLEL_MODES):
            raise ValueError(f"unknown parallel_answers {parallel!r}")
        parent_id = body.get("parent_id")
        now = int(time.time())

        with self._lock:
            chat = self._owned_chat(chat_id, payload["id"])
            if chat is None:
                return self._fail("Not_Found", CHAT_NOT_FOUND)
            if chat["in_progress"]:
                return self._fail("Bad_Request", CHAT_IN_PROGRESS)
            answers = {m["id"] for m in chat["messages"] if m["role"] == "assistant"}
            if not chat["messages"]:
                parent_ok = parent_id is None
            else:
                parent_ok = isinstance(parent_id, str) and parent_id in answers
            if not parent_ok:
                return self._fail("Bad_Request", PARENT_NOT_FOUND)
            left = self.quota.get(token)
            if left is not None:
                if left <= 0:
                    return self._fail(
                        "RateLimited",
                        RATE_LIMIT_DETAILS,
                        template=RATE_LIMIT_TEMPLATE,
                        num=self.rate_limit_hours,
                    )
                self.quota[token] = left - 1
            cut = None if chat_type == "t2v" else self._take_hostile(("truncate", "stream_error", *WALL_MODES))
            turn = _Turn(
                token=token,
                chat_id=chat_id,
                model=model,
                user_message_id=_new_id(),
                response_id=_new_id(),
                stream=stream is not False,
                phase_schema=feature_config.get("output_schema") == "phase",
                incremental=body.get("incremental_output") is True,
                phases=phases,
                input_tokens=SYSTEM_PROMPT_TOKENS + len(tokenize(text)),
                cut=cut,
                cut_after=self.hostile_after,
                chat_type=chat_type,
            )
            if parallel:
                turn.parallel = parallel
                turn.alt_response_id = _new_id()
                if self.parallel_alt_answer is None:
                    turn.alt_phases = list(phases)
                else:
                    alt = tokenize(str(self.parallel_alt_answer(text)))
                    turn.alt_phases = [(p, alt if p == "answer" else t) for p, t in phases]
                if parallel == "empty_primary":
                    turn.phases = [("answer", [])]
                self.parallel_turns.append(
                    {
                        "chat_id": chat_id,
                        "mode": parallel,
                        "response_ids": {"0": turn.response_id, "1": turn.alt_response_id},
                    }
                )
            chat["messages"].append(
                {
                    "id": turn.user_message_id,
                    "role": "user",
                    "content": message.get("content"),
                    "parent_id": parent_id,
                    "model": model,
                    "timestamp": now,
                    "status": "finished",
                    "request_parent_id": message.get("parent_id", message.get("parentId")),
                    "files": files,
                }
            )
            for rid in (turn.response_id, turn.alt_response_id):
                if rid is None:
                    continue
                chat["messages"].append(
                    {
                        "id": rid,
                        "role": "assistant",
                        "content": "",
                        "reasoning": "",
                        "parent_id": turn.user_message_id,
                        "model": model,
                        "timestamp": now,
                        "status": "typing",
                    }
                )
            chat["in_progress"] = True
            chat["turn"] = turn
            chat["last_response_id"] = turn.response_id
            chat["updated_at"] = now
            for doc in documents:
                self.documents.append({**doc, "chat_id": chat_id, "response_id": turn.response_id})
            if chat_type == "image_edit":
                self.image_edits.append(
                    {"chat_id": chat_id, "response_id": turn.response_id, "images": images, "prompt": text}
                )

        if chat_type == "t2v":
            return self._t2v_answer(turn, payload["id"], text)
        if not turn.stream:
            return self._complete_blocking(turn, request)
        body_iter = _StreamBody(self._stream(turn, request.environ), lambda: self._end_turn(turn, "aborted"))
        return Response(
            body_iter,
            status=200,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            content_type="text/event-stream",
            direct_passthrough=True,
        )

    def _t2v_answer(self, turn: _Turn, user_id: str, prompt: str) -> Response:
        """2026 §6: t2v answers JSON at once; the task id is in ``data.messages[0].extra.wanx``."""
        task_id = self._start_task(user_id, turn, prompt)
        self._end_turn(turn, "completed")
        message = {
            "id": turn.response_id,
            "role": "assistant",
            "content": "",
            "chat_type": "t2v",
            "extra": {"wanx": {"task_id": task_id}},
        }
        data = {
            "chat_id": "",
            "parent_id": turn.user_message_id,
            "message_id": turn.response_id,
            "messages": [message],
        }
        return self._ok(data)

    # ------------------------------------------------------------------ stop (2026 §3)

    def _ep_completions_stop(self, request: Request, body: Any) -> Response:
        auth = self._authenticate(request)
        if auth is None and self.guest_mode:
            auth = ("", {"id": self._guest_id(request), "guest": True})
        if auth is None:
            return self._unauthorized()
        chat_id = request.args.get("chat_id")
        if not isinstance(body, dict) or not chat_id or body.get("chat_id") != chat_id:
            return self._fail("Bad_Request", "Invalid input: chat_id")
        response_id = body.get("response_id")
        with self._lock:
            chat = self._owned_chat(chat_id, auth[1]["id"])
            if chat is None:
                return self._fail("Not_Found", CHAT_NOT_FOUND)
            answers = {m["id"] for m in chat["messages"] if m["role"] == "assistant"}
            if response_id not in answers:
                return self._fail("Bad_Request", "Invalid input: response_id")
            turn = chat.get("turn")
            active = (
                turn is not None
                and response_id in (turn.response_id, turn.alt_response_id)
                and not turn.generation_done
            )
            self.stop_calls.append(
                {"chat_id": chat_id, "response_id": response_id, "active": active, "time": time.time()}
            )
            if active:
                turn.stop_requested = True
        if active:
            self._end_generation(turn, "stopped")
        return self._ok(True)

    # ------------------------------------------------------------------ what a turn streams

    def _phases(
        self, text: str, chat_type: str, features: dict[str, Any], size: Any, user_id: str
    ) -> list[tuple[str, list[Any]]]:
        """What a turn will stream: (phase, tokens); a token is text or a prebuilt delta."""
        if chat_type in ("t2i", "image_edit"):
            ratio = size if size in IMAGE_HW else "1:1"
            key = _b64url(secrets.token_bytes(48))
            url = f"{self.image_base_url}/output/{user_id}/{chat_type}/{_new_id()}/{int(time.time())}.png?key={key}"
            delta = {
                "role": "assistant",
                "content": url,
                "phase": "image_gen",
                "status": "typing",
                "extra": {"output_image_hw": [IMAGE_HW[ratio]]},
            }
            return [("image_gen", [delta])]
        if chat_type == "t2v":
            return []  # the video comes from the task (2026 §6)
        phases: list[tuple[str, list[Any]]] = []
        if features.get("thinking_enabled") is True and chat_type != "deep_research":
            if self.thinking_style == "summary":
                phases.append(("thinking_summary", self._summary_deltas(text)))
            else:
                phases.append(("think", tokenize(f"The user asked: {text}. I will answer it.")))
        answer = str((self.answer or default_answer)(text))
        if chat_type == "deep_research":  # [U] no peer parses it: progress as summary thinking, then sources
            phases.append(("thinking_summary", self._research_deltas(text)))
            phases.append(("web_search", self._search_deltas(text)))
            answer = f"Research report: {answer} [[1]] [[2]]"
        elif chat_type == "search":
            phases.append(("web_search", self._search_deltas(text)))
            answer += " [[1]] [[2]]"
        phases.append(("answer", tokenize(answer)))
        return phases

    @staticmethod
    def _thought_deltas(steps: list[tuple[list[str], list[str]]]) -> list[dict[str, Any]]:
        return [
            {
                "role": "assistant",
                "content": "",
                "phase": "thinking_summary",
                "extra": {"summary_title": {"content": titles}, "summary_thought": {"content": thoughts}},
                "status": "typing",
            }
            for titles, thoughts in steps
        ]

    @staticmethod
    def _summary_deltas(text: str) -> list[dict[str, Any]]:
        """2026 ``thinking_summary``: cumulative title/thought arrays (§4.4)."""
        return FakeQwen._thought_deltas(
            [
                (["Reading the question"], ["The user asked:"]),
                (["Reading the question"], [f"The user asked: {text}."]),
                (["Reading the question", "Planning the answer"], [f"The user asked: {text}.", "I will answer it."]),
            ]
        )

    @staticmethod
    def _research_deltas(text: str) -> list[dict[str, Any]]:
        """Deep-research progress as cumulative summary steps (plan, search, write)."""
        plan = f"Research plan for: {text}"
        return FakeQwen._thought_deltas(
            [
                (["Planning the research"], [plan]),
                (["Planning the research", "Searching sources"], [plan, "Reading 2 sources."]),
                (
                    ["Planning the research", "Searching sources", "Writing the report"],
                    [plan, "Reading 2 sources.", "Writing the report."],
                ),
            ]
        )

    def _search_deltas(self, text: str) -> list[dict[str, Any]]:
        """The web_search tool call and its result (§4.5)."""
        docs = self.search_docs
        if docs is None:
            docs = [
                {
                    "url": f"https://example.com/{i}?q={uuid.uuid5(uuid.NAMESPACE_URL, text).hex[:8]}",
                    "title": f"Result {i} about {text}",
                    "snippet": f"Snippet {i}",
                    "date": "2025-10-01",
                }
                for i in (1, 2)
            ]
        call = {
            "role": "assistant",
            "content": "",
            "phase": "web_search",
            "status": "typing",
            "function_call": {"name": "web_search", "arguments": json.dumps({"queries": [text]}, ensure_ascii=False)},
            "function_id": "round_0_1",
            "extra": {"display_position": "answer"},
        }
        result = {
            "role": "function",
            "content": "",
            "phase": "web_search",
            "status": "finished",
            "name": "web_search",
            "extra": {"function_id": "1", "tool_result": {"docs": docs}},
        }
        return [call, result]

    def _ep_image_file(self, request: Request, body: Any, rest: str) -> Response:
        if not request.args.get("key"):
            return Response("AccessDenied", status=403, content_type="text/plain")
        if rest.endswith(".mp4"):
            return Response(TINY_MP4, content_type="video/mp4")
        return Response(TINY_PNG, content_type="image/png")

    def _pause(self) -> None:
        delay = self.chunk_delay
        if self._stopping.is_set():
            raise _Stopped
        if delay > 0 and self._stopping.wait(delay):
            raise _Stopped

    # ------------------------------------------------------------------ turn state

    def _message(self, chat_id: str, message_id: str | None) -> dict[str, Any] | None:
        chat = self.chats.get(chat_id)
        if chat is None or message_id is None:
            return None
        return next((m for m in chat["messages"] if m["id"] == message_id), None)

    @staticmethod
    def _sync_text(msg: dict[str, Any], done: bool = False) -> None:
        """Bring a big answer's message up to date from its turn (see ``_add_text``)."""
        turn = msg.pop("_live", None) if done else msg.get("_live")
        if turn is not None:
            for phase in turn.pieces:
                msg["content" if phase == "answer" else "reasoning"] = turn.text(phase)

    def _assistant_message(self, turn: _Turn) -> dict[str, Any] | None:
        return self._message(turn.chat_id, turn.response_id)

    def _add_text(self, turn: _Turn, phase: str, piece: str) -> None:
        with self._lock:
            turn.output_tokens += 1
            if phase == "think":
                turn.reasoning_tokens += 1
            turn.pieces.setdefault(phase, []).append(piece)
            turn.sizes[phase] = turn.sizes.get(phase, 0) + len(piece)
            msg = self._assistant_message(turn)
            if msg is None:
                return
            if turn.sizes[phase] <= LIVE_TEXT_LIMIT:
                msg["content" if phase == "answer" else "reasoning"] = turn.text(phase)
            else:  # a huge answer: joined when the chat is read and when generation ends (linear)
                msg["_live"] = turn

    def _add_raw(self, turn: _Turn, phase: str, delta: dict[str, Any]) -> None:
        """A prebuilt delta (summary, search, image) counts as one output token."""
        with self._lock:
            turn.output_tokens += 1
            if phase == "thinking_summary":
                turn.reasoning_tokens += 1
            if phase == "image_gen":
                turn.pieces["answer"] = [delta["content"]]
                msg = self._assistant_message(turn)
                if msg is not None:
                    msg["content"] = delta["content"]

    def _end_generation(self, turn: _Turn, status: str) -> None:
        """The model stopped producing for this turn: the chat accepts the next request."""
        with self._lock:
            if turn.generation_done:
                return
            turn.generation_done = True
            chat = self.chats.get(turn.chat_id)
            if chat is not None:
                chat["in_progress"] = False
                chat["updated_at"] = int(time.time())
            for rid in (turn.response_id, turn.alt_response_id):
                msg = self._message(turn.chat_id, rid)
                if msg is not None:
                    self._sync_text(msg, done=True)
                    msg["status"] = status

    def _end_turn(self, turn: _Turn, outcome: str) -> None:
        """Record how delivery of a turn ended (once): completed, aborted, truncated, …"""
        if outcome == "aborted" and self.abandon_keeps_generating and not turn.generation_done:
            self._abandon(turn)
            return
        status = {"completed": "finished", "aborted": "aborted"}.get(outcome, outcome)
        self._end_generation(turn, status)
        self._record_outcome(turn, outcome)

    def _record_outcome(self, turn: _Turn, outcome: str) -> None:
        with self._lock:
            if turn.outcome is not None:
                return
            turn.outcome = outcome
            if outcome == "completed":
                self.completed.append(turn.response_id)
            elif outcome == "aborted":
                self.aborted.append(turn.response_id)

    def _abandon(self, turn: _Turn) -> None:
        """2026 §3: the client left, the site keeps generating; the chat stays "in progress"
        until the stop endpoint is called (or ``abandon_seconds`` pass)."""
        with self._lock:
            turn.abandoned = True
        self._record_outcome(turn, "aborted")
        if self.abandon_seconds is not None and not self._stopping.is_set():
            timer = threading.Timer(self.abandon_seconds, self._end_generation, args=(turn, "finished"))
            timer.daemon = True
            with self._lock:
                self._timers.append(timer)
            timer.start()

    # ------------------------------------------------------------------ SSE framing

    def _frame(self, payload: bytes) -> Iterator[bytes]:
        event = b"data: " + payload + b"\n\n"
        if not self.split_events:
            yield event
            return
        cut = next((i + 1 for i, b in enumerate(event) if b >= 0x80), len(event) // 2)
        yield event[:cut]
        yield event[cut:]

    def _delta(
        self,
        turn: _Turn,
        delta: dict[str, Any],
        with_usage: bool = True,
        *,
        usage: dict[str, Any] | None = None,
        response_id: str | None = None,
    ) -> bytes:
        if not turn.phase_schema:
            delta = {k: v for k, v in delta.items() if k != "phase"}
        event: dict[str, Any] = {"choices": [{"delta": delta}]}
        if with_usage:
            event["usage"] = usage if usage is not None else turn.usage()
        if response_id is None and self.delta_response_ids:
            response_id = turn.response_id
        if response_id is not None:  # 2026 captures: top-level response_id and timestamp
            event["response_id"] = response_id
            event["timestamp"] = int(time.time())
        return _spaced(event)

    def _created(self, turn: _Turn, response_id: str | None = None, index: str = "0") -> bytes:
        # Spacing copied from the Oct 2025 capture (§4.1, §4.3), trailing space included.
        chat_id = json.dumps(turn.chat_id)
        parent_id = json.dumps(turn.user_message_id)
        rid = json.dumps(response_id or turn.response_id)
        return (
            f'{{"response.created":{{"chat_id": {chat_id}, "parent_id": {parent_id}, '
            f'"response_id":{rid}, "response_index": "{index}"}}}} '
        ).encode()

    @staticmethod
    def _finished_delta(phase: str = "answer") -> dict[str, Any]:
        return {"content": "", "role": "assistant", "status": "finished", "phase": phase}

    def _captcha_html(self) -> str:
        """A one-line captcha page (2026 §4: a non-JSON line inside the stream)."""
        return (
            '<!doctypehtml><html><head><meta charset="utf-8">'
            f'<meta name="aliyun_waf_aa" content="{secrets.token_hex(16)}"><title>captcha</title></head>'
            f'<body><script>location.href="{self._punish_url("/api/v2/chat/completions")}"</script></body></html>'
        )

    # ------------------------------------------------------------------ the stream

    def _stream(self, turn: _Turn, environ: dict[str, Any]) -> Iterator[bytes]:
        """The SSE body: the turn's events, with walls, stop and keep-open around them."""
        events = self._events_parallel(turn) if turn.parallel else self._events(turn, environ)
        try:
            sent = 0
            for payload in events:
                if turn.cut in WALL_MODES and sent >= self.wall_after_frames:
                    yield from self._wall(turn)
                    return
                if turn.stop_requested:
                    self._end_turn(turn, "stopped")
                    stopped = {"response.stopped": {"response_id": turn.response_id}}
                    yield from self._frame(_spaced(stopped))
                    return
                yield from self._frame(payload)
                sent += 1
            if self.keep_open_after_finished and turn.outcome == "completed":
                self._hold_open(turn, environ)
        except _Stopped:
            self._end_turn(turn, "stopped")
        except Exception:  # noqa: BLE001 - a crash in the fake must be visible to tests
            with self._lock:
                self.errors.append(traceback.format_exc())
            self._end_turn(turn, "crashed")
        finally:
            events.close()

    def _wall(self, turn: _Turn) -> Iterator[bytes]:
        """2026 §4: a captcha/WAF answer inside the HTTP 200 stream; the body then ends."""
        kind = str(turn.cut)
        self._note_wall(kind)
        self._end_turn(turn, "walled")
        if kind == "captcha_frame":
            frame = {"ret": list(self.stream_wall_ret), "data": {"url": self._punish_url("/api/v2/chat/completions")}}
            yield from self._frame(_compact(frame))
        elif kind == "html_frame":  # a data: line that is not JSON
            yield from self._frame(self._captcha_html().encode())
        else:  # html_line: a bare line without "data:"
            yield self._captcha_html().encode() + b"\n\n"

    @staticmethod
    def _client_gone(environ: dict[str, Any]) -> bool:
        """Whether the client closed its end (EOF readable on the socket)."""
        sock = environ.get("werkzeug.socket")
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _hold_open(self, turn: _Turn, environ: dict[str, Any]) -> None:
        """2026 §3: the connection stays open after ``finished``; clients must stop reading."""
        start = time.monotonic()
        closed = False
        while not self._stopping.is_set() and time.monotonic() - start < self.keep_open_seconds:
            if self._client_gone(environ):
                closed = True
                break
            self._stopping.wait(0.02)
        with self._lock:
            self.held_open.append(
                {"response_id": turn.response_id, "client_closed": closed, "seconds": time.monotonic() - start}
            )

    def _cut_events(self, turn: _Turn, environ: dict[str, Any]) -> Iterator[bytes]:
        """Hostile end of a stream: a dropped connection or an in-stream error event."""
        if turn.cut == "truncate":
            self._end_turn(turn, "truncated")
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return
        self._end_turn(turn, "error")
        yield _spaced({"error": dict(self.stream_error_payload)})

    def _events(self, turn: _Turn, environ: dict[str, Any]) -> Iterator[bytes]:
        """One answer's events (§4.2), as JSON payloads."""
        cuts = ("truncate", "stream_error")
        yield self._created(turn)
        if self.info_events:
            self._pause()
            info = {
                "action": "keep_alive",
                "chat_id": turn.chat_id,
                "response_id": turn.response_id,
                "timestamp": int(time.time()),
            }
            yield _spaced({"response.info": info})
        sent = 0
        for phase, tokens in turn.phases:
            for token in tokens:
                if turn.cut in cuts and sent >= turn.cut_after:
                    yield from self._cut_events(turn, environ)
                    return
                self._pause()
                if isinstance(token, dict):
                    self._add_raw(turn, phase, token)
                    delta = token
                else:
                    self._add_text(turn, phase, token)
                    content = token if turn.incremental else turn.text(phase)
                    delta = {"role": "assistant", "content": content, "phase": phase, "status": "typing"}
                yield self._delta(turn, delta)
                sent += 1
            if phase in ("think", "thinking_summary", "image_gen"):
                self._pause()
                if phase == "image_gen":  # the last event of a t2i stream
                    self._end_generation(turn, "finished")
                yield self._delta(turn, self._finished_delta(phase))
                if phase == "image_gen":
                    self._end_turn(turn, "completed")
                    return
        if turn.cut in cuts:
            yield from self._cut_events(turn, environ)
            return
        self._pause()
        yield self._delta(turn, {"role": "assistant", "content": "", "phase": "answer", "status": "typing"})
        self._pause()
        self._end_generation(turn, "finished")
        yield self._delta(turn, self._finished_delta(), with_usage=False)
        # Reached only once the finished event was written to the socket.
        self._end_turn(turn, "completed")

    def _events_parallel(self, turn: _Turn) -> Iterator[bytes]:
        """2026 §3: two answers (``response_index`` "0" and "1") interleaved, each delta with
        its ``response_id``; branch "1" speaks first and finishes first, as captured (Rfym21 #149)."""
        assert turn.alt_response_id is not None
        yield self._created(turn, turn.response_id, "0")
        yield self._created(turn, turn.alt_response_id, "1")
        branches = [
            (turn.alt_response_id, self._branch_events(turn, 1)),
            (turn.response_id, self._branch_events(turn, 0)),
        ]
        while branches:
            for item in list(branches):
                rid, gen = item
                try:
                    payload = next(gen)
                except StopIteration:
                    branches.remove(item)
                    self._pause()
                    if not branches:
                        self._end_generation(turn, "finished")
                    yield self._delta(turn, self._finished_delta(), with_usage=False, response_id=rid)
                    continue
                yield payload
        self._end_turn(turn, "completed")

    def _branch_events(self, turn: _Turn, index: int) -> Iterator[bytes]:
        """The deltas of one parallel answer, up to (not including) its ``finished``."""
        rid = turn.response_id if index == 0 else turn.alt_response_id
        phases = turn.phases if index == 0 else turn.alt_phases
        texts: dict[str, str] = {}
        output = reasoning = 0
        for phase, tokens in phases:
            for token in tokens:
                self._pause()
                if index == 0:
                    if isinstance(token, dict):
                        self._add_raw(turn, phase, token)
                    else:
                        self._add_text(turn, phase, token)
                output += 1
                reasoning += phase in ("think", "thinking_summary")
                if isinstance(token, dict):
                    delta = token
                else:
                    texts[phase] = texts.get(phase, "") + token
                    content = token if turn.incremental else texts[phase]
                    delta = {"role": "assistant", "content": content, "phase": phase, "status": "typing"}
                    if index == 1 and phase == "answer":
                        with self._lock:
                            msg = self._message(turn.chat_id, rid)
                            if msg is not None:
                                msg["content"] = texts[phase]
                yield self._delta(turn, delta, usage=turn.usage(output, reasoning), response_id=rid)
            if phase in ("think", "thinking_summary"):
                self._pause()
                yield self._delta(
                    turn, self._finished_delta(phase), usage=turn.usage(output, reasoning), response_id=rid
                )
        self._pause()
        tail = {"role": "assistant", "content": "", "phase": "answer", "status": "typing"}
        yield self._delta(turn, tail, usage=turn.usage(output, reasoning), response_id=rid)

    def _complete_blocking(self, turn: _Turn, request: Request) -> Response:
        """``stream:false``: generate everything, then answer the §3.5 JSON envelope."""
        environ = request.environ
        if turn.cut in WALL_MODES:
            self._note_wall(str(turn.cut))
            self._end_turn(turn, "walled")
            return self._captcha(request) if turn.cut == "captcha_frame" else self._waf()
        try:
            for phase, tokens in turn.phases:
                for token in tokens:
                    self._pause()
                    if isinstance(token, dict):
                        self._add_raw(turn, phase, token)
                    else:
                        self._add_text(turn, phase, token)
        except _Stopped:
            self._end_turn(turn, "stopped")
            return self._fail("Internal_Server_Error", "Internal error occurred")
        if turn.cut == "stream_error":
            self._end_turn(turn, "error")
            return self._fail(
                self.stream_error_payload.get("code", "Internal_Server_Error"),
                self.stream_error_payload.get("details", "Internal error occurred"),
            )
        answer = turn.text("answer")
        envelope = _compact(
            {
                "success": True,
                "request_id": _new_id(),
                "data": {
                    "chat_id": "",
                    "parent_id": turn.user_message_id,
                    "message_id": turn.response_id,
                    "messages": None,
                    "choices": [{"message": {"role": "assistant", "content": answer}}],
                },
            }
        )
        if turn.cut == "truncate":
            self._end_turn(turn, "truncated")

            def cut_body() -> Iterator[bytes]:
                yield envelope[: len(envelope) // 2]
                sock = environ.get("werkzeug.socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

            return Response(cut_body(), content_type="application/json", direct_passthrough=True)
        self._end_turn(turn, "completed")
        return Response(envelope, content_type="application/json")


@contextlib.contextmanager
def running_fake_qwen(**kwargs: Any) -> Iterator[FakeQwen]:
    """Start a :class:`FakeQwen` (``kwargs`` go to its constructor) and stop it afterwards."""
    fake = FakeQwen(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.fakes.qwen_web --port 8899``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Fake chat.qwen.ai web API")
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    parser.add_argument("--user", action="append", default=[], metavar="EMAIL:PASSWORD")
    parser.add_argument("--site-2026", action="store_true", help="the 2026 front end's defaults (use_2026_site)")
    args = parser.parse_args(argv)
    fake = FakeQwen(chunk_delay=args.chunk_delay)
    if args.site_2026:
        fake.use_2026_site()
    fake.start(port=args.port)
    print(f"fake chat.qwen.ai at {fake.url}", flush=True)
    print(f"token: {fake.make_token()}", flush=True)
    for spec in args.user:
        email, _, password = spec.partition(":")
        fake.add_user(email, password)
        print(f"user: {email}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
