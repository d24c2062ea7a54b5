"""The ``browser`` and ``auto`` transports: Qwen calls through the browser pool worker.

The pool (``workers/browser_pool/``) makes each call as a ``fetch()`` inside a chat.qwen.ai
page and streams the raw body back over a local socket. This side runs in the gevent web
processes: plain ``http.client`` over a stdlib ``socket`` (which gevent patches), so a
waiting stream never blocks the hub. Nothing here imports asyncio or pyppeteer.

``AutoTransport`` sends directly and falls back to the pool when Qwen answers the direct call
with its captcha/WAF wall; ``UpstreamResponse.served_by`` tells which one served.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import ApiError, UpstreamBlocked, UpstreamError, UpstreamUnavailable
from ..netutil import UnixHTTPConnection, shutdown
from . import walls
from .protocol import SSEDecoder, StreamInterpreter, error_from_response
from .transport import DirectTransport, Transport, UpstreamResponse, cookie_token, json_bytes

log = logging.getLogger(__name__)

HEADER_PREFIX = "x-upstream-h-"


def pool_address(config: Mapping[str, Any]) -> str:
    """``BROWSER_POOL_SOCKET`` as an absolute path (or an ``http://`` address), default
    ``<SESSION_DIR>/browser_pool.sock``."""
    configured = str(config.get("BROWSER_POOL_SOCKET") or "").strip()
    if configured.startswith("http://"):
        return configured.rstrip("/")
    path = Path(configured) if configured else Path(str(config["SESSION_DIR"])) / "browser_pool.sock"
    return str(path.resolve())


class PoolResponse(UpstreamResponse):
    """The upstream's answer as the pool relays it; ``close()`` aborts the in-page fetch."""

    def __init__(self, transport: BrowserTransport, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._transport = transport
        self._conn = conn
        self._resp = resp
        self._closed = False
        self._lock = threading.Lock()
        self.job_id = resp.getheader("X-Pool-Job", "")
        self.status = int(resp.getheader("X-Upstream-Status", "0") or 0)
        headers: dict[str, str] = {}
        for key, value in resp.getheaders():
            if key.lower().startswith(HEADER_PREFIX):
                headers[key[len(HEADER_PREFIX) :].lower()] = value
        ctype = resp.getheader("X-Upstream-Content-Type")
        if ctype:
            headers["content-type"] = ctype
        self.headers = headers
        self.served_by = "browser"

    def iter_bytes(self) -> Iterator[bytes]:
        try:
            while True:
                try:
                    chunk = self._resp.read1(65536)
                except (http.client.HTTPException, OSError, ValueError, AttributeError) as exc:
                    if self._closed:
                        return
                    if isinstance(exc, TimeoutError | socket.timeout):
                        raise UpstreamError(
                            "The browser pool sent nothing for too long", status=504, code="upstream_timeout"
                        ) from exc
                    reason = self._transport.job_failure(self.job_id)
                    raise UpstreamError(
                        f"Qwen's answer broke off in the browser pool: {reason}", code="upstream_truncated"
                    ) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # a read blocked in another greenlet/thread returns now; the pool sees the
        # connection close and aborts the fetch inside the page
        shutdown(self._conn.sock)
        with contextlib.suppress(Exception):
            self._resp.close()
        with contextlib.suppress(Exception):
            self._conn.close()


class BrowserTransport(Transport):
    """Every call as a job for the browser pool worker."""

    name = "browser"

    def __init__(
        self,
        address: str,
        *,
        origin: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        other_origins: Transport | None = None,
    ) -> None:
        self.address = address
        self.origin = origin
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # the pages live on QWEN_BASE_URL's origin; anything else (an OSS upload URL) goes direct
        self.other_origins = other_origins

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BrowserTransport:
        parts = urlsplit(str(config["QWEN_BASE_URL"]))
        return cls(
            pool_address(config),
            origin=f"{parts.scheme}://{parts.netloc}",
            read_timeout=float(config["QWEN_READ_TIMEOUT"]),
            other_origins=DirectTransport(float(config["QWEN_CONNECT_TIMEOUT"]), float(config["QWEN_READ_TIMEOUT"])),
        )

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.address.startswith("http://"):
            parts = urlsplit(self.address)
            return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        return UnixHTTPConnection(self.address, timeout, host="browser-pool")

    def _not_running(self, exc: BaseException) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"The browser pool is not running ({type(exc).__name__} on {self.address}): "
            "the gateway starts it when QWEN_TRANSPORT=browser|auto, or run `python -m workers.browser_pool`",
            code="browser_pool_unavailable",
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        stream: bool = False,
        account_id: str | None = None,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        on_site = not self.origin or url == self.origin or url.startswith(self.origin + "/")
        if not on_site and self.other_origins is not None:
            return self.other_origins.request(
                method, url, headers=headers, json_body=json_body, stream=stream, account_id=account_id, timeout=timeout
            )
        job_timeout = float(timeout or self.read_timeout)
        job = {
            "method": method,
            "url": url,
            # as a string: the page sends exactly these bytes, the size uploads/context measured
            "body": None if json_body is None else json_bytes(json_body).decode("utf-8"),
            "account_id": account_id,
            "timeout": job_timeout,
            **job_headers(headers),
        }
        payload = json.dumps(job, ensure_ascii=False).encode("utf-8")
        # the pool enforces the job timeout (and its queue timeout) itself; this is a backstop
        conn = self._connection(self.connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise self._not_running(exc) from exc
        conn.sock.settimeout(job_timeout + 45.0)
        try:
            conn.request("POST", "/v1/fetch", body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if isinstance(exc, TimeoutError | socket.timeout):
                raise UpstreamError("The browser pool did not answer in time", status=504, code="upstream_timeout")
            raise self._not_running(exc) from exc
        if resp.status != 200:
            try:
                body = resp.read()
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                conn.close()
            raise _pool_error(resp.status, body)
        return PoolResponse(self, conn, resp)

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        conn = self._connection(timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, json.loads(body.decode("utf-8") or "null")
        finally:
            conn.close()

    def release_profile(self, account_id: str) -> bool:
        """Ask the pool to close an account's browser (before opening its profile elsewhere,
        e.g. a sign-in window). False when the pool is not running or had none open."""
        conn = self._connection(5.0)
        try:
            conn.request("DELETE", f"/v1/browsers/{quote(str(account_id), safe='')}")
            resp = conn.getresponse()
            return resp.status == 200 and bool(json.loads(resp.read().decode("utf-8") or "{}").get("closed"))
        except (OSError, http.client.HTTPException, ValueError):
            return False
        finally:
            conn.close()

    def job_failure(self, job_id: str) -> str:
        """Why a job's stream broke off, as the pool recorded it."""
        try:
            status, info = self._get(f"/v1/jobs/{job_id}", timeout=2.0)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return f"the browser pool process is gone ({type(exc).__name__})"
        if status == 200 and isinstance(info, dict) and info.get("error"):
            return str(info["error"])
        return "the connection to the browser pool broke"

    def close(self) -> None:
        if self.other_origins is not None:
            self.other_origins.close()

    def pool_status(self) -> dict[str, Any]:
        """The pool's ``/health``, for ``/api/status``; never raises."""
        try:
            _status, info = self._get("/health", timeout=2.0)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return {"running": False, "address": self.address, "error": f"{type(exc).__name__}: {exc}"}
        out = {"running": True, "address": self.address}
        if isinstance(info, dict):
            out.update(info)
        return out


# Headers the page itself supplies in the browser (2026 §2, §4): its anti-bot script adds the
# bx-* signature headers, and the front end knows its own `version` (BROWSER_PAGE_VERSION_PATH).
# The gateway's values go as `page_headers`, fallbacks the pool uses only where the page has
# none of its own.
PAGE_OWNED = ("version",)


def job_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """The header fields of a pool job: ``headers`` for the in-page ``fetch()`` without the
    page-owned ones (``bx-*`` dropped, ``version`` moved to ``page_headers``), and the
    account ``token``, which the pool puts in the profile's ``token`` cookie (how the 2026
    site authenticates); no ``Authorization`` is made up for it (``QWEN_AUTH_HEADER`` still
    sends one explicitly)."""
    sent: dict[str, str] = {}
    page: dict[str, str] = {}
    for key, value in headers.items():
        low = key.lower()
        if low.startswith("bx-"):
            continue
        if low in PAGE_OWNED:
            page[low] = str(value)
        elif low != "cookie":  # fetch() cannot set it; the profile's own jar goes along
            sent[key] = str(value)
    token = cookie_token(headers)
    out: dict[str, Any] = {"headers": sent, "page_headers": page}
    if token:
        out["token"] = token
    return out


def _pool_error(status: int, body: bytes) -> UpstreamError:
    try:
        error = json.loads(body.decode("utf-8")).get("error") or {}
    except (ValueError, AttributeError, UnicodeDecodeError):
        error = {}
    message = str(error.get("message") or f"the browser pool answered HTTP {status}")
    code = str(error.get("code") or "browser_pool_error")
    if status == 503:
        return UpstreamUnavailable(f"Browser pool: {message}", code=code)
    if status == 504:
        return UpstreamError(f"Browser pool: {message}", status=504, code=code)
    return UpstreamError(f"Browser pool: {message}", code=code)


class BufferedResponse(UpstreamResponse):
    """A response already read to its end (what ``auto`` inspected)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, served_by: str) -> None:
        self.status = status
        self.headers = dict(headers)
        self._body = body
        self.served_by = served_by

    def iter_bytes(self) -> Iterator[bytes]:
        if self._body:
            yield self._body

    def close(self) -> None:
        pass


class PeekedResponse(UpstreamResponse):
    """A stream whose first chunks ``auto`` already read: they come first, then the rest."""

    def __init__(self, response: UpstreamResponse, held: list[bytes], rest: Iterator[bytes]) -> None:
        self._response = response
        self._held = held
        self._rest = rest
        self.status = response.status
        self.headers = response.headers
        self.served_by = response.served_by

    def iter_bytes(self) -> Iterator[bytes]:
        held, self._held = self._held, []
        yield from held
        yield from self._rest

    def close(self) -> None:
        self._response.close()


def peek_stream_wall(response: UpstreamResponse) -> tuple[list[bytes], Iterator[bytes], UpstreamBlocked | None]:
    """Read a 200 event stream up to its first answer frame: a wall before it (2026 §4: a
    captcha frame, a captcha page line) is returned; the chunks read so far are kept."""
    decoder = SSEDecoder()
    interp = StreamInterpreter()
    held: list[bytes] = []
    rest = response.iter_bytes()
    try:
        for chunk in rest:
            held.append(chunk)
            for data in decoder.feed(chunk):
                interp.feed_data(data)
                if '"choices"' in data or interp.finished:
                    return held, rest, None
            for line in decoder.take_stray():
                interp.feed_stray(line)
        for data in decoder.close():
            interp.feed_data(data)
        for line in decoder.take_stray():
            interp.feed_stray(line)
    except UpstreamBlocked as wall:
        return held, rest, wall
    except ApiError:  # any other failure is the stream's to report, unchanged
        pass
    return held, rest, None


STREAM_WALL_STICKY = 30.0  # seconds: at least the retried turn goes to the browser


class AutoTransport(Transport):
    """Direct first; when Qwen answers with any of its walls, the browser pool.

    A wall is a captcha/WAF answer, an ``x-actual-status-code`` 403/404 on a 200 (the call
    is sent again through the pool), or a wall frame or line before the first answer frame of
    a 200 event stream (2026 §4): then ``UpstreamBlocked`` with ``browser_next`` asks the
    caller to start its turn again. After a wall, calls go straight to the pool for
    ``sticky_seconds``.
    """

    name = "auto"

    def __init__(self, direct: Transport, browser: BrowserTransport, sticky_seconds: float = 300.0) -> None:
        self.direct = direct
        self.browser = browser
        self.sticky_seconds = sticky_seconds
        self._browser_until = 0.0

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        stream: bool = False,
        account_id: str | None = None,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        kwargs = dict(headers=headers, json_body=json_body, stream=stream, account_id=account_id, timeout=timeout)
        if time.monotonic() < self._browser_until:
            return self.browser.request(method, url, **kwargs)
        response = self.direct.request(method, url, **kwargs)
        ctype = response.header("content-type").lower()
        err: ApiError | None
        if response.status == 200 and "text/event-stream" in ctype and walls.header_wall(response.headers) is None:
            held, rest, err = peek_stream_wall(response)
            if err is None:
                return PeekedResponse(response, held, rest)
            response.close()
            # the site may have recorded this turn before its wall: the caller starts the turn
            # again (a new chat for a new conversation), and that goes to the browser
            log.warning("direct stream from %s met the anti-bot wall; the turn goes to the browser pool", url)
            self._browser_until = time.monotonic() + max(self.sticky_seconds, STREAM_WALL_STICKY)
            retry = walls.blocked(getattr(err, "what", "captcha") + "; retried through the browser pool")
            retry.browser_next = True  # type: ignore[attr-defined]
            raise retry
        else:
            try:
                body = response.read()
            finally:
                response.close()
            err = error_from_response(response.status, response.headers, body)
            if not isinstance(err, UpstreamBlocked):
                return BufferedResponse(
                    response.status, response.headers, body, served_by=response.served_by or "direct"
                )
        log.warning(
            "direct call to %s hit the anti-bot wall (%s); using the browser pool",
            url.split("?", maxsplit=1)[0],
            err.code,
        )
        self._browser_until = time.monotonic() + self.sticky_seconds
        try:
            return self.browser.request(method, url, **kwargs)
        except UpstreamUnavailable as exc:
            raise UpstreamUnavailable(
                f"Qwen refused the direct call with its anti-bot wall, and {exc.message}", code=exc.code
            ) from exc

    def pool_status(self) -> dict[str, Any]:
        return self.browser.pool_status()

    def close(self) -> None:
        self.direct.close()
        self.browser.close()


def make_browser_transport(kind: str, config: Mapping[str, Any]) -> Transport:
    browser = BrowserTransport.from_config(config)
    if kind == "auto":
        direct = DirectTransport(float(config["QWEN_CONNECT_TIMEOUT"]), float(config["QWEN_READ_TIMEOUT"]))
        return AutoTransport(direct, browser, float(config.get("BROWSER_AUTO_STICKY_SECONDS") or 0))
    return browser
