"""Downloads of generated media: images for ``response_format: "b64_json"`` and finished
videos for ``GET /v1/videos/{id}/content``.

The URLs come from the upstream's answers, so they are fetched only from the upstream's own
hosts (``MEDIA_HOSTS`` plus ``QWEN_BASE_URL``'s host; every redirect is checked again) and
never beyond ``MEDIA_MAX_MB``: the gateway must not become a way to fetch anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import UpstreamError
from ..netutil import abort_response

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
CHUNK = 64 * 1024


def host_patterns(config: Mapping[str, Any]) -> list[str]:
    """``MEDIA_HOSTS`` (comma-separated, ``*.example.com`` for subdomains) + the site's host."""
    patterns = [h.strip().lower() for h in str(config.get("MEDIA_HOSTS") or "").split(",") if h.strip()]
    base = urlsplit(str(config.get("QWEN_BASE_URL") or "")).hostname
    if base:
        patterns.append(base.lower())
    return patterns


def host_allowed(url: str, patterns: Iterable[str]) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        return False
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) or host == pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


@dataclass
class Download:
    """An open download: its type, its announced length, and its body in checked chunks."""

    content_type: str
    length: int | None
    response: requests.Response
    limit: int

    def chunks(self) -> Iterator[bytes]:
        """The body; ``UpstreamError`` past the limit (a server may lie about the length)."""
        seen = 0
        try:
            for chunk in self.response.iter_content(chunk_size=CHUNK):
                seen += len(chunk)
                if seen > self.limit:
                    raise _too_large(self.limit)
                yield chunk
        except requests.RequestException as exc:
            raise UpstreamError(f"The media download broke off ({type(exc).__name__})", code="media_fetch") from exc
        finally:
            self.close()

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        _drop(self.response)


def _drop(response: requests.Response) -> None:
    abort_response(response)
    response.close()


def _too_large(limit: int) -> UpstreamError:
    return UpstreamError(f"The media is larger than MEDIA_MAX_MB ({limit / 1048576:g} MB)", code="media_too_large")


class MediaFetcher:
    """Opens media URLs of the upstream, within the host allow-list and the size limit."""

    def __init__(self, patterns: list[str], limit: int, timeout: tuple[float, float], user_agent: str = "") -> None:
        self.patterns = patterns
        self.limit = limit
        self.timeout = timeout
        self.user_agent = user_agent

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MediaFetcher:
        return cls(
            host_patterns(config),
            int(float(config.get("MEDIA_MAX_MB") or 100) * 1024 * 1024),
            (float(config.get("QWEN_CONNECT_TIMEOUT") or 10.0), float(config.get("QWEN_READ_TIMEOUT") or 120.0)),
            str(config.get("QWEN_USER_AGENT") or ""),
        )

    def allowed(self, url: str) -> bool:
        return host_allowed(url, self.patterns)

    def check(self, url: str) -> None:
        if not self.allowed(url):
            host = urlsplit(url).hostname or url[:40]
            raise UpstreamError(
                f"The upstream's media URL is on {host}, which is not in MEDIA_HOSTS; not fetched",
                code="media_host_not_allowed",
            )

    def open(self, url: str) -> Download:
        """Start a download (redirects followed by hand, each target checked)."""
        headers = {"User-Agent": self.user_agent} if self.user_agent else {}
        for _ in range(MAX_REDIRECTS + 1):
            self.check(url)
            try:
                response = requests.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=False)
            except requests.RequestException as exc:
                raise UpstreamError(f"Could not fetch the media: {type(exc).__name__}", code="media_fetch") from exc
            if response.is_redirect and response.headers.get("location"):
                url = urljoin(url, response.headers["location"])
                _drop(response)
                continue
            if response.status_code != 200:
                _drop(response)
                raise UpstreamError(
                    f"Fetching the media answered HTTP {response.status_code} (signed links expire after hours)",
                    code="media_fetch",
                )
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else None
            if size is not None and size > self.limit:
                _drop(response)
                raise _too_large(self.limit)
            ctype = response.headers.get("content-type") or "application/octet-stream"
            return Download(ctype, size, response, self.limit)
        raise UpstreamError("The media URL redirected too often", code="media_fetch")

    def read(self, url: str) -> bytes:
        return self.open(url).read()
