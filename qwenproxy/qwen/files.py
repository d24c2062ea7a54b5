"""chat.qwen.ai file endpoints (spec §5): STS credentials, document parsing and its status.

Every call goes through the client's ``Transport`` (direct HTTP or the browser pool), like
the chat calls. Flask-free; the wait for a parsed document takes an injectable ``sleep``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ApiError, NotFound, UpstreamError
from .client import QwenClient
from .protocol import error_from_response, unwrap

STS_PATHS = ("/api/v2/files/getstsToken", "/api/v1/files/getstsToken")
PARSE_PATH = "/api/v2/files/parse"
PARSE_STATUS_PATH = "/api/v2/files/parse/status"
PARSE_DONE = {"success", "succeeded", "done", "finished", "parsed"}
PARSE_FAILED = {"failed", "fail", "error"}
ACCEPT = "application/json, text/plain, */*"
REQUIRED_STS_FIELDS = ("access_key_id", "access_key_secret", "security_token", "bucketname", "file_path", "file_url")


@dataclass(frozen=True)
class StsCredentials:
    """One STS answer (§5.1): temporary OSS credentials for exactly one object."""

    access_key_id: str
    access_key_secret: str
    security_token: str
    bucket: str
    region: str
    endpoint: str
    file_id: str
    file_path: str
    file_url: str
    expiration: str = ""

    @classmethod
    def from_payload(cls, payload: Any) -> StsCredentials:
        """Accept the flat v1 answer and the enveloped v2 one; name what is missing."""
        data = unwrap(payload)
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "access_key_id" not in data:
            data = data["data"]
        if not isinstance(data, dict):
            raise UpstreamError("Qwen's STS answer is not an object", code="upstream_sts")
        missing = [k for k in REQUIRED_STS_FIELDS if not data.get(k)]
        if missing:
            raise UpstreamError(f"Qwen's STS answer is incomplete: missing {', '.join(missing)}", code="upstream_sts")
        file_path = str(data["file_path"])
        file_id = str(data.get("file_id") or "")
        if not file_id:  # <user_id>/<file_id>_<filename>
            file_id = file_path.rsplit("/", 1)[-1].split("_", 1)[0]
        return cls(
            access_key_id=str(data["access_key_id"]),
            access_key_secret=str(data["access_key_secret"]),
            security_token=str(data["security_token"]),
            bucket=str(data["bucketname"]),
            region=str(data.get("region") or ""),
            endpoint=str(data.get("endpoint") or ""),
            file_id=file_id,
            file_path=file_path,
            file_url=str(data["file_url"]),
            expiration=str(data.get("expiration") or ""),
        )


def _is_missing_endpoint(status: int, headers: Mapping[str, str], raw: bytes) -> bool:
    """A 404 in any of its shapes: real status, ``x-actual-status-code``, or ``Not_Found``."""
    lower = {k.lower(): v for k, v in headers.items()}
    if status in (404, 405) or lower.get("x-actual-status-code", "").strip() == "404":
        return True
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, dict) and str(data.get("code", "")).lower() == "not_found"


class QwenFiles:
    def __init__(
        self,
        client: QwenClient,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.sleep = sleep
        self.clock = clock

    def _post(self, path: str, token: str, body: Any, account_id: str | None) -> tuple[int, Mapping[str, str], bytes]:
        return self.client.call("POST", path, token=token, body=body, account_id=account_id, accept=ACCEPT)

    def _json(self, path: str, token: str, body: Any, account_id: str | None) -> Any:
        return self.client.decode(path, *self._post(path, token, body, account_id))

    def sts_token(
        self, token: str, filename: str, filesize: int, filetype: str, *, account_id: str | None = None
    ) -> Any:
        """``getstsToken`` (§5.1): v2 first, v1 when v2 is missing; the raw JSON answer."""
        body = {"filename": filename, "filesize": filesize, "filetype": filetype}
        last: tuple[str, int, Mapping[str, str], bytes] | None = None
        for path in STS_PATHS:
            status, headers, raw = self._post(path, token, body, account_id)
            if _is_missing_endpoint(status, headers, raw):
                last = (path, status, headers, raw)
                continue
            return self.client.decode(path, status, headers, raw)
        assert last is not None
        path, status, headers, raw = last
        err = error_from_response(status, headers, raw)
        raise err or NotFound("Qwen has no getstsToken endpoint", code="upstream_not_found")

    def credentials(
        self, token: str, filename: str, filesize: int, filetype: str, *, account_id: str | None = None
    ) -> StsCredentials:
        return StsCredentials.from_payload(self.sts_token(token, filename, filesize, filetype, account_id=account_id))

    def parse_document(
        self,
        token: str,
        file_id: str,
        *,
        account_id: str | None = None,
        timeout: float = 60.0,
        interval: float = 1.0,
    ) -> str:
        """``files/parse`` then poll ``parse/status`` until ``success`` (§5.3); the final status."""
        self._json(PARSE_PATH, token, {"file_id": file_id}, account_id)
        deadline = self.clock() + timeout
        while True:
            payload = self._json(PARSE_STATUS_PATH, token, {"file_id_list": [file_id]}, account_id)
            status = self._status_of(payload, file_id)
            if status in PARSE_DONE:
                return status
            if status in PARSE_FAILED:
                raise UpstreamError(f"Qwen could not parse the document (status {status})", code="parse_failed")
            if self.clock() + interval > deadline:
                raise ApiError(
                    f"Qwen did not finish parsing the document within {timeout:g} s",
                    status=504,
                    type="upstream_error",
                    code="parse_timeout",
                )
            self.sleep(interval)

    @staticmethod
    def _status_of(payload: Any, file_id: str) -> str:
        data = unwrap(payload)
        if isinstance(data, dict):
            data = data.get("data", data.get("list", [data]))
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and str(item.get("file_id", file_id)) == file_id:
                return str(item.get("status", "")).lower()
        return ""
