"""One job: an upstream call made as an in-page ``fetch()``, as a web process asked for it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .browsers import PageSlot

# fetch() ignores these (forbidden request headers) or the browser sets them itself
DROPPED_HEADERS = {
    "accept-charset",
    "accept-encoding",
    "connection",
    "content-length",
    "cookie",
    "cookie2",
    "date",
    "dnt",
    "expect",
    "host",
    "keep-alive",
    "origin",
    "referer",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
}
# upstream headers not worth passing back (the pool re-frames the body)
HIDDEN_RESPONSE_HEADERS = {"content-length", "transfer-encoding", "content-encoding", "connection", "set-cookie"}
# headers the page owns (qwen-web-2026.md §2): the page's own value wins over the job's
# fallback (``page_headers``); an older gateway still sends ``version`` among the headers
PAGE_OWNED = ("version",)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    for key, value in headers.items():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class JobError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(eq=False)
class Job:
    id: str
    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    account_id: str | None
    timeout: float
    token: str | None = None
    page_headers: dict[str, str] = field(default_factory=dict)  # fallbacks for page-owned headers
    header_auth: bool = False  # the token goes as Authorization: it is not in the profile's cookie
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    page: PageSlot | None = None
    task: asyncio.Future | None = None
    done: bool = False
    outcome: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.monotonic)

    def push_error(self, reason: str) -> None:
        """A pool-side failure (crash, navigation, shutdown): the reader sees it next."""
        if not self.done:
            self.queue.put_nowait({"type": "error", "error": reason, "pool": True})

    def fetch_init(self, origin: str) -> dict[str, Any]:
        """The ``fetch()`` options. The account authenticates with the profile's ``token``
        cookie (2026 §2); only a job whose token is not there (no account, or the cookie
        could not be set) carries ``Authorization: Bearer``. The page's anti-bot script adds
        the ``bx-*`` headers itself, so none is taken from the job."""
        headers: dict[str, str] = {}
        referrer = None
        for key, value in self.headers.items():
            low = key.lower()
            if low == "referer":
                referrer = str(value)
            elif low in PAGE_OWNED or low.startswith("bx-"):
                continue  # the page's own (READER_JS: page_headers as the fallback)
            elif low not in DROPPED_HEADERS and not low.startswith(("sec-", "proxy-")):
                headers[key] = str(value)
        if self.header_auth and self.token and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = f"Bearer {self.token}"
        init: dict[str, Any] = {
            "method": self.method,
            "headers": headers,
            "credentials": "include",
            "cache": "no-store",
            "redirect": "follow",
        }
        if referrer and referrer.startswith(origin):
            init["referrer"] = referrer
        if self.body is not None and self.method not in ("GET", "HEAD"):
            init["body"] = self.body
        return init


def parse_job(spec: Any, origin: str, default_timeout: float) -> Job:
    """A job from the JSON a web process posted; ``JobError`` 400 when it is not one."""
    if not isinstance(spec, dict):
        raise JobError(400, "bad_job", "the job must be a JSON object")
    method = str(spec.get("method") or "GET").upper()
    url = str(spec.get("url") or "")
    if not (url == origin or url.startswith(origin + "/")):
        raise JobError(400, "bad_job", f"the pool only fetches from {origin} (QWEN_BASE_URL), not {url[:100]}")
    headers = spec.get("headers") or {}
    if not isinstance(headers, dict):
        raise JobError(400, "bad_job", "headers must be an object")
    headers = {str(k): str(v) for k, v in headers.items()}
    page_headers = spec.get("page_headers") or {}
    if not isinstance(page_headers, dict):
        raise JobError(400, "bad_job", "page_headers must be an object")
    fallbacks = {k.lower(): v for k, v in headers.items() if k.lower() in PAGE_OWNED}
    fallbacks.update({str(k).lower(): str(v) for k, v in page_headers.items()})
    token = spec.get("token")
    body = spec.get("body")
    body_text = None if body is None else (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False))
    try:
        timeout = float(spec.get("timeout") or default_timeout)
    except (TypeError, ValueError):
        timeout = default_timeout
    account = spec.get("account_id")
    return Job(
        id=uuid.uuid4().hex,
        method=method,
        url=url,
        headers=headers,
        body=body_text,
        account_id=str(account) if account else None,
        timeout=max(0.1, timeout),
        token=str(token) if isinstance(token, str) and token else bearer_token(headers),
        page_headers=fallbacks,
    )
