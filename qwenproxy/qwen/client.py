"""A chat.qwen.ai client over any ``Transport``: chats, completions, models, sign-in."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

from ..errors import ApiError, Unauthorized, UpstreamBlocked, UpstreamError
from ..events import Event
from . import walls
from .protocol import error_from_response, new_chat_body, parse_stream, unwrap
from .transport import Transport, UpstreamResponse, browser_headers, json_bytes

MODEL_LIST_PATHS = ("/api/v2/models/", "/api/models")  # 2026 §1: the front end's first, then the old one

log = logging.getLogger(__name__)

GUEST_REFERER = "/c/guest"  # the page a guest chats on (2026 §5)
# 2026 §5: several API clients share an account here, so its cross-chat memory and native
# tools go off (our own modes turn search and images on per request)
MEMORY_OFF: dict[str, Any] = {"memory": {"enable_memory": False, "enable_history_memory": False}}
TOOLS_OFF: dict[str, Any] = {
    "tools_enabled": {
        "web_search": False,
        "code_interpreter": False,
        "history_retriever": False,
        "bio": False,
        "image_gen_tool": False,
        "image_edit_tool": False,
        "web_extractor": False,
        "web_search_image": False,
        "image_zoom_in_tool": False,
    }
}
_REFRESH_COOKIE = re.compile(r"(?:^|[;,]\s*)refresh_token=([^;,\s]+)")


def _refused(raw: bytes) -> str | None:
    """The ``details`` of an ``Unauthorized`` envelope (wrong e-mail or password), else None."""
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("success") is not False:
        return None
    data = payload.get("data")
    if isinstance(data, dict) and str(data.get("code")).lower() == "unauthorized":
        return str(data.get("details") or "wrong e-mail or password")
    return None


def _with_refresh_cookie(payload: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The refresh token may come in the body or only as a ``refresh_token`` cookie (2026 §5)."""
    if payload.get("refresh_token"):
        return payload
    lower = {k.lower(): v for k, v in headers.items()}
    match = _REFRESH_COOKIE.search(lower.get("set-cookie", ""))
    return {**payload, "refresh_token": match.group(1)} if match else payload


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
        chat_mode: str = "normal",
    ) -> str:
        """``POST /api/v2/chats/new`` → the new chat id (§3.4, 2026 §2: no title);
        ``chat_mode="guest"`` with no token for a guest chat (2026 §5)."""
        body = new_chat_body(model, chat_type=chat_type, chat_mode=chat_mode)
        referer = GUEST_REFERER if chat_mode == "guest" else "/c/new-chat"
        payload = unwrap(
            self._json("POST", "/api/v2/chats/new", token=token, body=body, account_id=account_id, referer_path=referer)
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
        data = json_bytes(body)  # encoded once: measured here, sent by the transport
        size = len(data)  # what the body wall counts
        referer = GUEST_REFERER if body.get("chat_mode") == "guest" else f"/c/{quote(str(chat_id))}"
        response = self.transport.request(
            "POST",
            f"{self.base_url}/api/v2/chat/completions?chat_id={quote(str(chat_id))}",
            headers=browser_headers(self.config, token=token, referer_path=referer, stream=True),
            json_body=data,
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

    def start_task(self, token: str, body: Mapping[str, Any], *, account_id: str | None = None) -> Any:
        """A ``stream:false`` completion (a ``t2v`` turn, 2026 §6): its envelope's ``data``."""
        chat_id = str(body["chat_id"])
        path = f"/api/v2/chat/completions?chat_id={quote(chat_id)}"
        response = self.transport.request(
            "POST",
            self.base_url + path,
            headers=browser_headers(
                self.config, token=token, accept="application/json", referer_path=f"/c/{quote(chat_id)}"
            ),
            json_body={**body, "stream": False},
            account_id=account_id,
        )
        try:
            status, headers, raw = response.status, response.headers, response.read()
        finally:
            response.close()
        return unwrap(self.decode(path, status, headers, raw))

    def task_status(self, token: str, task_id: str, *, account_id: str | None = None) -> Any:
        """``GET /api/v1/tasks/status/<task_id>`` (2026 §6): the raw status answer."""
        path = f"/api/v1/tasks/status/{quote(task_id, safe='')}"
        return self._json("GET", path, token=token, account_id=account_id, accept="application/json")

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
        """Sign in with the SHA-256 hex of the password: ``POST /api/v2/auths/signin``, and the
        v1 endpoint when v2 is not there (404/405) (2026 §5, §2.2).

        ``prehashed``: ``password`` already is that hex digest (stored credentials). The answer
        has ``token`` and, from v2, ``refresh_token`` (from the body or its cookie)."""
        digest = password.lower() if prehashed else hashlib.sha256(password.encode("utf-8")).hexdigest()
        body = {"email": email, "password": digest}
        path = "/api/v2/auths/signin"
        status, headers, raw = self.call("POST", path, token=None, body=body, accept="application/json")
        if status in (404, 405):
            log.info("the v2 sign-in answered HTTP %s; trying v1", status)
            path, v2_status = "/api/v1/auths/signin", status
            status, headers, raw = self.call("POST", path, token=None, body=body, accept="application/json")
            if status in (404, 405):
                raise UpstreamError(
                    f"Qwen's sign-in API is closed (v2 answered HTTP {v2_status}, v1 HTTP {status}): sign in "
                    "through the browser instead (`flask accounts add` without --email), or paste a token "
                    "(`--token -`)",
                    code="signin_unavailable",
                )
        refused = _refused(raw)
        if refused is not None:
            raise Unauthorized(f"Qwen refused the sign-in: {refused}", code="signin_refused")
        payload = unwrap(self.decode(path, status, headers, raw))
        if not isinstance(payload, dict) or not payload.get("token"):
            raise UpstreamError("Qwen sign-in returned no token")
        return _with_refresh_cookie(payload, headers)

    def refresh(
        self, refresh_token: str, *, account_id: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """``POST /api/v2/auths/refresh {refresh_token}``: a new token (and usually a new
        refresh token: the old one then stops working) (2026 §5)."""
        path = "/api/v2/auths/refresh"
        status, headers, raw = self.call(
            "POST",
            path,
            token=None,
            body={"refresh_token": refresh_token},
            account_id=account_id,
            accept="application/json",
            timeout=timeout,
        )
        payload = unwrap(self.decode(path, status, headers, raw))
        if not isinstance(payload, dict) or not payload.get("token"):
            raise UpstreamError("Qwen's token refresh returned no token")
        return _with_refresh_cookie(payload, headers)

    def update_settings(self, token: str, settings: Mapping[str, Any], *, account_id: str | None = None) -> Any:
        """``POST /api/v2/users/user/settings/update``: the account's memory and tools (2026 §5)."""
        return unwrap(
            self._json(
                "POST", "/api/v2/users/user/settings/update", token=token, body=dict(settings), account_id=account_id
            )
        )

    def switch_off_memory_and_tools(self, token: str, *, account_id: str | None = None) -> None:
        """The two ``settings/update`` calls the maintained peers make once per account."""
        for settings in (MEMORY_OFF, TOOLS_OFF):
            self.update_settings(token, settings, account_id=account_id)

    def entitlement_quota(
        self, token: str, features: list[str], *, account_id: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """``POST /api/v2/users/user/entitlement_quota``: ``times_left`` (-1 unlimited),
        ``time_unit``, ``time_amount`` per model and feature (2026 §5)."""
        payload = unwrap(
            self._json(
                "POST",
                "/api/v2/users/user/entitlement_quota",
                token=token,
                body={"features": list(features)},
                account_id=account_id,
                timeout=timeout,
            )
        )
        if not isinstance(payload, dict):
            raise UpstreamError("Qwen answered entitlement_quota with no data")
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
