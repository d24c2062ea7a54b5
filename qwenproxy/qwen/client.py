"""A chat.qwen.ai client over any ``Transport``: chats, completions, models, sign-in."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from ..errors import ApiError, UpstreamBlocked, UpstreamError
from ..events import Event
from . import walls
from .protocol import error_from_response, new_chat_body, parse_stream, unwrap
from .transport import Transport, UpstreamResponse, browser_headers

MODEL_LIST_PATHS = ("/api/v2/models/", "/api/models")  # 2026 §1: the front end's first, then the old one

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
        accept: str = "application/json",
        referer_path: str = "/",
        timeout: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One whole (non-stream) request: ``(status, headers, body bytes)``."""
        response = self.transport.request(
            method,
            self.base_url + path,
            headers=browser_headers(self.config, token=token, accept=accept, referer_path=referer_path),
            json_body=body,
            account_id=account_id,
            timeout=timeout,
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
    ) -> str:
        """``POST /api/v2/chats/new`` → the new chat id (§3.4, 2026 §2: no title)."""
        body = new_chat_body(model, chat_type=chat_type)
        payload = unwrap(
            self._json(
                "POST", "/api/v2/chats/new", token=token, body=body, account_id=account_id, referer_path="/c/new-chat"
            )
        )
        chat_id = payload.get("id") if isinstance(payload, dict) else None
        if not chat_id:
            raise UpstreamError("Qwen created no chat id")
        return str(chat_id)

    def open_completion(
        self, token: str, body: Mapping[str, Any], *, account_id: str | None = None
    ) -> tuple[Iterator[Event], UpstreamResponse]:
        """Start ``POST /api/v2/chat/completions`` and return its events, read incrementally.

        A JSON or HTML answer instead of an event stream is an error envelope (§3.0, §4.9)
        and is raised here, before any event. A wall, here or inside the stream, says what to
        do for the transport that met it (2026 §4).
        """
        chat_id = body["chat_id"]
        size = len(json.dumps(body, ensure_ascii=False).encode("utf-8"))
        response = self.transport.request(
            "POST",
            f"{self.base_url}/api/v2/chat/completions?chat_id={quote(str(chat_id))}",
            headers=browser_headers(self.config, token=token, referer_path=f"/c/{quote(str(chat_id))}", stream=True),
            json_body=dict(body),
            stream=True,
            account_id=account_id,
        )
        advice = {"served_by": response.served_by, "account_id": account_id, "body_bytes": size}
        ctype = response.header("content-type").lower()
        actual = response.header("x-actual-status-code").strip()
        if "text/event-stream" not in ctype or response.status != 200 or actual not in ("", "200"):
            try:
                raw = response.read()
            finally:
                response.close()
            err = error_from_response(response.status, response.headers, raw)
            if isinstance(err, UpstreamBlocked):
                err = walls.advise(err, **advice)
            raise err or UpstreamError(f"Qwen answered with {ctype or 'no content type'} instead of a stream")
        return _advised(parse_stream(response.iter_bytes()), advice), response

    def stop(
        self, token: str | None, chat_id: str, response_id: str, *, account_id: str | None = None, timeout: float = 2.0
    ) -> bool:
        """``POST /api/v2/chat/completions/stop?chat_id=`` (2026 §3): stop a generation, so
        the chat does not stay "in progress". ``timeout`` bounds the whole call."""
        payload = self._json(
            "POST",
            f"/api/v2/chat/completions/stop?chat_id={quote(str(chat_id))}",
            token=token,
            body={"chat_id": chat_id, "response_id": response_id},
            account_id=account_id,
            referer_path=f"/c/{quote(str(chat_id))}",
            timeout=timeout,
        )
        return isinstance(payload, dict) and payload.get("success") is not False

    def current_response_id(
        self, token: str | None, chat_id: str, *, account_id: str | None = None, timeout: float = 2.0
    ) -> str | None:
        """The newest message of a chat (``GET /api/v2/chats/<id>`` → ``currentId``): the
        answer still generating when the chat is "in progress"."""
        payload = unwrap(
            self._json(
                "GET", f"/api/v2/chats/{quote(str(chat_id))}", token=token, account_id=account_id, timeout=timeout
            )
        )
        if not isinstance(payload, dict):
            return None
        history = (payload.get("chat") or {}).get("history") if isinstance(payload.get("chat"), dict) else None
        current = payload.get("currentId") or (history.get("currentId") if isinstance(history, dict) else None)
        return str(current) if current else None

    def list_models(self, token: str | None, *, account_id: str | None = None) -> list[dict[str, Any]]:
        """The raw model objects: ``GET /api/v2/models/`` as the 2026 front end asks, then
        ``GET /api/models`` (§3.3, 2026 §1) when that fails or lists nothing."""
        failure: ApiError | None = None
        for path in MODEL_LIST_PATHS:
            try:
                payload = unwrap(self._json("GET", path, token=token, account_id=account_id))
            except ApiError as exc:
                log.info("model list from %s failed: %s", path, exc.message)
                failure = exc
                continue
            data = payload.get("data") if isinstance(payload, dict) else payload
            if isinstance(data, dict):  # the /api/v2/models shape: data.data[]
                data = data.get("data")
            models = [m for m in (data if isinstance(data, list) else []) if isinstance(m, dict) and m.get("id")]
            if models:
                return models
        if failure is not None:
            raise failure
        return []

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


def _advised(events: Iterator[Event], advice: Mapping[str, Any]) -> Iterator[Event]:
    """The events; a wall met inside the stream says what to do for this transport."""
    try:
        yield from events
    except UpstreamBlocked as exc:
        raise walls.advise(exc, **advice) from exc
