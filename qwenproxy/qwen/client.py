"""A chat.qwen.ai client over any ``Transport``: chats, completions, models, sign-in."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from ..errors import UpstreamError
from ..events import Event
from .protocol import error_from_response, new_chat_body, parse_stream, unwrap
from .transport import Transport, UpstreamResponse, browser_headers

log = logging.getLogger(__name__)


class QwenClient:
    def __init__(self, transport: Transport, config: Mapping[str, Any]) -> None:
        self.transport = transport
        self.config = config
        self.base_url = str(config["QWEN_BASE_URL"]).rstrip("/")

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        body: Any = None,
        account_id: str | None = None,
        accept: str = "*/*",
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One whole (non-stream) request: ``(status, headers, body bytes)``."""
        response = self.transport.request(
            method,
            self.base_url + path,
            headers=browser_headers(self.config, token=token, accept=accept),
            json_body=body,
            account_id=account_id,
        )
        try:
            return response.status, response.headers, response.read()
        finally:
            response.close()

    @staticmethod
    def decode(path: str, status: int, headers: Mapping[str, str], raw: bytes) -> Any:
        """A JSON answer; every failure shape of §3.0 becomes a typed error."""
        err = error_from_response(status, headers, raw)
        if err is not None:
            raise err
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else None
        except ValueError as exc:  # UnicodeDecodeError included
            raise UpstreamError(f"Qwen answered {path} with something that is not JSON") from exc

    def _json(self, method: str, path: str, *, token: str | None, body: Any = None, **kwargs: Any) -> Any:
        """One JSON request (``call`` + ``decode``)."""
        return self.decode(path, *self.call(method, path, token=token, body=body, **kwargs))

    def create_chat(
        self,
        token: str,
        model: str,
        *,
        chat_type: str = "t2t",
        account_id: str | None = None,
        title: str | None = None,
    ) -> str:
        """``POST /api/v2/chats/new`` → the new chat id (§3.4)."""
        body = new_chat_body(model, chat_type=chat_type, **({"title": title} if title else {}))
        payload = unwrap(self._json("POST", "/api/v2/chats/new", token=token, body=body, account_id=account_id))
        chat_id = payload.get("id") if isinstance(payload, dict) else None
        if not chat_id:
            raise UpstreamError("Qwen created no chat id")
        return str(chat_id)

    def open_completion(
        self, token: str, body: Mapping[str, Any], *, account_id: str | None = None
    ) -> tuple[Iterator[Event], UpstreamResponse]:
        """Start ``POST /api/v2/chat/completions`` and return its events, read incrementally.

        A JSON or HTML answer instead of an event stream is an error envelope (§3.0, §4.9)
        and is raised here, before any event.
        """
        chat_id = body["chat_id"]
        response = self.transport.request(
            "POST",
            f"{self.base_url}/api/v2/chat/completions?chat_id={quote(str(chat_id))}",
            headers=browser_headers(
                self.config, token=token, accept="*/*", referer_path=f"/c/{quote(str(chat_id))}", stream=True
            ),
            json_body=dict(body),
            stream=True,
            account_id=account_id,
        )
        ctype = response.header("content-type").lower()
        actual = response.header("x-actual-status-code").strip()
        if "text/event-stream" not in ctype or response.status != 200 or actual not in ("", "200"):
            try:
                raw = response.read()
            finally:
                response.close()
            err = error_from_response(response.status, response.headers, raw)
            raise err or UpstreamError(f"Qwen answered with {ctype or 'no content type'} instead of a stream")
        return parse_stream(response.iter_bytes()), response

    def list_models(self, token: str | None, *, account_id: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/models`` (§3.3): the raw model objects."""
        payload = unwrap(self._json("GET", "/api/models", token=token, account_id=account_id))
        data = payload.get("data") if isinstance(payload, dict) else payload
        if isinstance(data, dict):  # the /api/v2/models shape
            data = data.get("data")
        return [m for m in (data or []) if isinstance(m, dict) and m.get("id")]

    def signin(self, email: str, password: str, *, prehashed: bool = False) -> dict[str, Any]:
        """``POST /api/v1/auths/signin`` with the SHA-256 hex of the password (§2.2).

        ``prehashed``: ``password`` already is that hex digest (stored credentials)."""
        digest = password.lower() if prehashed else hashlib.sha256(password.encode("utf-8")).hexdigest()
        payload = unwrap(
            self._json("POST", "/api/v1/auths/signin", token=None, body={"email": email, "password": digest})
        )
        if not isinstance(payload, dict) or not payload.get("token"):
            raise UpstreamError("Qwen sign-in returned no token")
        return payload

    def session_info(self, token: str) -> dict[str, Any]:
        """``GET /api/v1/auths/``: validates a token (§2.2)."""
        payload = unwrap(self._json("GET", "/api/v1/auths/", token=token))
        return payload if isinstance(payload, dict) else {}
