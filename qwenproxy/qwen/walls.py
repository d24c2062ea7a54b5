"""chat.qwen.ai's anti-bot walls: recognising them wherever they appear (2026 spec §4).

A wall (slider captcha, WAF page, "new anti-spam" header) can come as a JSON answer, an HTML
page, a data frame inside an HTTP 200 event stream, a bare non-SSE line in that stream, or
an ``x-actual-status-code: 403/404`` header on a 200. Each is an ``UpstreamBlocked`` with
the code ``upstream_blocked`` and a message that says what to do, never "truncated".
Flask-free, transport-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import UpstreamBlocked

BLOCKED_CODE = "upstream_blocked"
# 2026 §4, the list Rfym21's upstream-error.js checks (compared case-insensitively)
SIGNATURES = ("FAIL_SYS_USER_VALIDATE", "RGV587", "punish", "captcha", "x5sec", "aliyun_waf", "_waf_", "baxia")
_LOWER = tuple(s.lower() for s in SIGNATURES)
WALL_STATUS_CODES = ("403", "404")  # x-actual-status-code on an HTTP 200 (FreeQwenApi #72)
# frames of a normal stream that carry no choices and are not walls
_STREAM_KEYS = ("response.created", "response.info", "response.stopped")


def signature_in(text: str) -> str | None:
    """The first wall signature found in ``text``, else ``None``."""
    lowered = text.lower()
    for signature, low in zip(SIGNATURES, _LOWER, strict=True):
        if low in lowered:
            return signature
    return None


def frame_signature(obj: Mapping[str, Any]) -> str | None:
    """The wall signature of a decoded stream frame that is not part of an answer.

    Answer frames (``choices``) and the stream's own bookkeeping frames are never scanned:
    an answer may well talk about captchas.
    """
    if "choices" in obj or any(key in obj for key in _STREAM_KEYS):
        return None
    return signature_in(json.dumps(obj, ensure_ascii=False))


def blocked(what: str) -> UpstreamBlocked:
    """The wall error; ``advise`` completes its message once the transport is known."""
    err = UpstreamBlocked(
        f"Qwen answered with its anti-bot wall ({what}) instead of an answer. {GENERIC_ADVICE}",
        code=BLOCKED_CODE,
    )
    err.what = what  # type: ignore[attr-defined]
    return err


GENERIC_ADVICE = (
    "Use QWEN_TRANSPORT=browser (or auto): plain HTTP rarely passes the 2026 walls; with the "
    "browser transport, pass the captcha once in the account's browser or wait a few minutes."
)
BODY_LIMIT = 128 * 1024  # 2026 §2: larger completion bodies get the captcha, deterministically


def advise(
    err: UpstreamBlocked,
    *,
    served_by: str = "",
    account_id: str | None = None,
    body_bytes: int | None = None,
) -> UpstreamBlocked:
    """The same wall with a message for the transport that met it (and the body's size)."""
    what = getattr(err, "what", None) or "captcha"
    steps: list[str] = []
    if body_bytes is not None and body_bytes > BODY_LIMIT - 8 * 1024:
        steps.append(
            f"This request's body is {body_bytes // 1024} KB and the site walls bodies above about 128 KB: "
            "shorten the conversation or send the long part as a file."
        )
    if served_by == "browser":
        who = f"`flask accounts solve {account_id}`" if account_id else "the account's browser profile"
        steps.append(
            f"The browser pool met it too: pass the captcha once by hand ({who}) or wait a few minutes before retrying."
        )
    else:
        steps.append(
            "The direct transport (plain HTTP) rarely passes the 2026 walls: set QWEN_TRANSPORT=browser "
            "(or auto, which falls back to the browser on a wall)."
        )
    advised = UpstreamBlocked(
        f"Qwen answered with its anti-bot wall ({what}) instead of an answer. " + " ".join(steps),
        code=BLOCKED_CODE,
    )
    advised.what = what  # type: ignore[attr-defined]
    return advised


def header_wall(headers: Mapping[str, str]) -> UpstreamBlocked | None:
    """``x-actual-status-code: 403/404`` on an HTTP 200: the "new anti-spam system"."""
    for key, value in headers.items():
        if key.lower() == "x-actual-status-code" and value.strip() in WALL_STATUS_CODES:
            return blocked(f"x-actual-status-code {value.strip()} on HTTP 200")
    return None
