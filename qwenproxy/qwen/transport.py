"""How bytes reach chat.qwen.ai: one small interface, with the ``direct`` HTTP transport here.

The ``browser`` transport (a fetch inside a logged-in page of the browser pool) implements
the same interface, so neither the protocol module nor the routes change with the transport.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from typing_extensions import override

from ..errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ..netutil import abort_response
from .http import BrokenBody, HTTPClient, PooledResponse, TimedOut, Unreachable


class UpstreamResponse(ABC):
    """A response whose body may still be arriving."""

    status: int
    headers: Mapping[str, str]
    served_by: str = ""

    @abstractmethod
    def iter_bytes(self) -> Iterator[bytes]:
        """Body chunks as they arrive (never waits for the whole body)."""

    def read(self) -> bytes:
        return b"".join(self.iter_bytes())

    @abstractmethod
    def close(self) -> None:
        """Abort the request; safe to call from another thread, and more than once."""

    def release(self) -> None:
        """The reader is done (e.g. the stream's ``finished`` event came): keep the connection
        for the next request if the rest of the body follows at once, else close it."""
        self.close()

    def header(self, name: str) -> str:
        name = name.lower()
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return ""


class Transport(ABC):
    name: str = ""

    @abstractmethod
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
        """Send one request; raise ``UpstreamUnavailable`` when the upstream is unreachable.
        ``json_body``: a JSON value, or its ``json_bytes`` already encoded."""

    def close(self) -> None:
        pass


def js_date_string(now: float | None = None) -> str:
    """``Date.toString()`` without the zone name, as the front end sends in ``timezone``."""
    t = time.localtime(now)
    offset = -time.altzone if t.tm_isdst > 0 and time.daylight else -time.timezone
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset)
    return time.strftime("%a %b %d %Y %H:%M:%S", t) + f" GMT{sign}{offset // 3600:02d}{offset % 3600 // 60:02d}"


def browser_headers(
    config: Mapping[str, Any],
    *,
    token: str | None,
    accept: str = "application/json",
    referer_path: str = "/",
    stream: bool = False,
) -> dict[str, str]:
    """The header set of the 2026 web front end (2026 §2); every drifting value is a setting.

    The account authenticates with the ``token`` cookie, as the real front end does;
    ``QWEN_AUTH_HEADER`` adds the older ``Authorization: Bearer``. ``bx-v`` goes out only
    when ``QWEN_BX_V`` is set: without the page's ``bx-ua``/``bx-umidtoken`` pair it does
    more harm than good. ``stream``: the call reads an event stream (``x-accel-buffering``).
    """
    base = str(config["QWEN_BASE_URL"]).rstrip("/")
    headers = {
        "Accept": accept,
        "Accept-Language": str(config.get("QWEN_ACCEPT_LANGUAGE") or "en-US,en;q=0.9"),
        "Content-Type": "application/json; charset=UTF-8",
        "Origin": base,
        "Referer": base + referer_path,
        "User-Agent": str(config["QWEN_USER_AGENT"]),
        "source": "web",
        "version": str(config["QWEN_FRONTEND_VERSION"]),
        "timezone": js_date_string(),
        "x-request-id": str(uuid.uuid4()),
    }
    if stream:
        headers["x-accel-buffering"] = "no"
    bx_v = str(config.get("QWEN_BX_V") or "").strip()
    if bx_v:
        headers["bx-v"] = bx_v
    if token:
        headers["Cookie"] = f"token={token}"
        if config.get("QWEN_AUTH_HEADER"):
            headers["Authorization"] = f"Bearer {token}"
    return headers


def _timed_out(exc: BaseException) -> bool:
    """A read timeout: requests raises it as such before the body, and as a ConnectionError
    wrapping urllib3's ReadTimeoutError while the body streams."""
    import requests
    from urllib3.exceptions import ReadTimeoutError

    return isinstance(exc, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in exc.args)


def _timeout_error(seconds: float | None) -> UpstreamTimeout:
    return UpstreamTimeout(f"Qwen sent nothing for {seconds:g} s (QWEN_READ_TIMEOUT)" if seconds else "Qwen timed out")


def cookie_token(headers: Mapping[str, str]) -> str | None:
    """The ``token`` cookie (or a Bearer token) a header set carries, for the browser pool."""
    for key, value in headers.items():
        low = key.lower()
        if low == "cookie":
            for part in str(value).split(";"):
                name, _, val = part.strip().partition("=")
                if name == "token" and val:
                    return val
        elif low == "authorization":
            scheme, _, val = str(value).partition(" ")
            if scheme.lower() == "bearer" and val.strip():
                return val.strip()
    return None


def json_bytes(body: Any) -> bytes:
    """A JSON body as the front end's ``JSON.stringify`` sends it: compact, raw UTF-8 (the
    size the upstream's body wall counts; ``uploads/context.json_size`` measures the same).
    ``bytes`` are a body encoded already (an agent's 100 KB prompt is encoded once a turn)."""
    if isinstance(body, bytes):
        return body
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _RequestsResponse(UpstreamResponse):
    def __init__(self, response: Any, read_timeout: float | None = None) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers
        self.served_by = "direct"
        self._read_timeout = read_timeout

    def iter_bytes(self) -> Iterator[bytes]:
        import requests

        try:
            # chunk_size=None: hand over each piece as soon as the socket yields it
            yield from self._response.iter_content(chunk_size=None)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, AttributeError) as exc:
            if _timed_out(exc):
                raise _timeout_error(self._read_timeout) from exc
            raise UpstreamError(f"Qwen's answer broke off ({type(exc).__name__})", code="upstream_truncated") from exc
        finally:
            self._response.close()

    def close(self) -> None:
        abort_response(self._response)


class _PooledUpstreamResponse(UpstreamResponse):
    """``http.PooledResponse`` behind the transport interface."""

    served_by = "direct"

    def __init__(self, response: PooledResponse, read_timeout: float | None = None) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self.status = response.status
        self.headers = response.headers

    def header(self, name: str) -> str:
        return self._response.header(name)

    def iter_bytes(self) -> Iterator[bytes]:
        try:
            yield from self._response.iter_bytes()
        except TimedOut as exc:
            raise _timeout_error(self._read_timeout) from exc
        except BrokenBody as exc:
            raise UpstreamError(f"Qwen's answer broke off ({exc})", code="upstream_truncated") from exc

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        # a body read to its end has already gone back to the pool: then this does nothing
        self._response.abort()


class DirectTransport(Transport):
    """Plain HTTPS with the browser's headers on kept-alive connections (``qwen.http``).

    A proxy that ``qwen.http`` cannot speak (SOCKS, an https:// proxy) falls back to
    ``requests`` for that origin. Sockets are gevent-cooperative in the web workers.
    """

    name = "direct"

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 120.0) -> None:
        self._timeout = (connect_timeout, read_timeout)
        self.http = HTTPClient(connect_timeout, read_timeout)
        self._fallback: RequestsTransport | None = None

    @override
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
        pool = self.http.pool(url)
        if not pool.route.supported:
            if self._fallback is None:
                self._fallback = RequestsTransport(*self._timeout)
            return self._fallback.request(
                method, url, headers=headers, json_body=json_body, stream=stream, timeout=timeout
            )
        try:
            body = None if json_body is None else json_bytes(json_body)
            response = self.http.request(method, url, headers=headers, body=body, timeout=timeout)
        except TimedOut as exc:
            raise _timeout_error(timeout or self._timeout[1]) from exc
        except Unreachable as exc:
            raise UpstreamUnavailable(f"Cannot reach Qwen at {url.split('?', maxsplit=1)[0]}: {exc}") from exc
        return _PooledUpstreamResponse(response, timeout or self._timeout[1])

    def connections_opened(self) -> int:
        """Upstream TCP connections opened so far (keep-alive makes this small)."""
        return self.http.opened()

    def close(self) -> None:
        self.http.close()
        if self._fallback is not None:
            self._fallback.close()


class RequestsTransport(Transport):
    """The same over ``requests``: for proxies ``qwen.http`` does not speak."""

    name = "direct"

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 120.0) -> None:
        import requests

        self._session = requests.Session()
        self._timeout = (connect_timeout, read_timeout)
        # requests reads proxies, the CA bundle and ~/.netrc from the environment on every
        # request; the upstream host does not change, so do it once per host (see _settings)
        self._env: dict[tuple[str, str], dict[str, Any]] = {}

    def _settings(self, url: str) -> dict[str, Any]:
        key = tuple(urlsplit(url)[:2])
        settings = self._env.get(key)
        if settings is None:
            settings = self._session.merge_environment_settings(url, {}, None, None, None)
            self._env[key] = settings
            self._session.trust_env = False
        return settings

    @override
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
        import requests

        try:
            settings = self._settings(url)
            response = self._session.request(
                method,
                url,
                headers=dict(headers),
                data=None if json_body is None else json_bytes(json_body),
                stream=stream,
                timeout=(min(self._timeout[0], timeout), timeout) if timeout else self._timeout,
                proxies=settings["proxies"],
                verify=settings["verify"],
                cert=settings["cert"],
            )
        except requests.ReadTimeout as exc:
            raise _timeout_error(timeout or self._timeout[1]) from exc
        except requests.RequestException as exc:
            raise UpstreamUnavailable(
                f"Cannot reach Qwen at {url.split('?', maxsplit=1)[0]}: {type(exc).__name__}"
            ) from exc
        return _RequestsResponse(response, timeout or self._timeout[1])

    def close(self) -> None:
        self._session.close()
