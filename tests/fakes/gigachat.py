"""A faithful fake of the GigaChat API for offline tests (spec §2, SDK ``gigachat`` 0.2.x).

A real HTTP server on 127.0.0.1 (free port, background thread), so the official SDK talks
to it exactly as it talks to Sber: ``GIGACHAT_AUTH_URL=fake.auth_url`` and
``GIGACHAT_BASE_URL=fake.url``.

What it enforces, because the real service does:

* ``POST /api/v2/oauth``: form body with ``scope``; ``RqUID`` a 36-char uuid (else 400);
  ``Authorization: Basic <base64(id:secret)>`` (else 400 code 4); the right key (else 401
  code 6); a scope the key has (else 400 code 5 / 7); at most 10 token requests a second
  (else 429). Answers ``{"access_token", "expires_at"}`` with ``expires_at`` in **ms**.
* ``/api/v1/*``: ``Authorization: Bearer <token>``; a stale or unknown token gets
  ``401 {"status":401,"message":"Token has expired"}``.
* ``POST /api/v1/chat/completions``: the v1 JSON contract (versioned model name in the
  answer, ``created`` in seconds, usage, ``finish_reason`` ``stop``/``length``); with
  ``"stream": true`` an SSE body with content type exactly ``text/event-stream``, one
  ``data:`` line per ``"object":"chat.completion"`` chunk, the role on the first delta,
  an empty last delta with ``finish_reason`` and ``usage``, then ``data: [DONE]``, and the
  connection closed. Chunks are written one by one (``chunk_delay`` between them).
* ``GET /api/v1/models``, ``GET /api/v1/models/{id}`` (404 "No such model"),
  ``POST /api/v1/tokens/count``.
* Injectable failures (``fail_next``): any status with the API's ``{"status","message"}``
  body, optionally with ``Retry-After``; ``expire_tokens()`` invalidates every issued token;
  ``delays`` slows an endpoint down.

Every request is recorded (``requests``); ``oauth_calls`` counts successful token grants.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.fakes import issued
from tests.fakes.server import BackgroundServer

DEFAULT_CLIENT_ID = "0193f6a0-fake-client-id"
DEFAULT_CLIENT_SECRET = "fake-client-secret"
DEFAULT_CREDENTIALS = base64.b64encode(f"{DEFAULT_CLIENT_ID}:{DEFAULT_CLIENT_SECRET}".encode()).decode()
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
MODEL_VERSION = "2.0.28.2"

# The January 2026 list from the spec (§2.5), with each model's ``type``.
DEFAULT_MODELS: list[dict[str, str]] = [
    {"id": name, "object": "model", "owned_by": "salutedevices", "type": kind}
    for name, kind in [
        ("GigaChat", "chat"),
        ("GigaChat-2", "chat"),
        ("GigaChat-2-Max", "chat"),
        ("GigaChat-2-Max-preview", "chat"),
        ("GigaChat-2-Pro", "chat"),
        ("GigaChat-2-Pro-preview", "chat"),
        ("GigaChat-2-preview", "chat"),
        ("GigaChat-Max", "chat"),
        ("GigaChat-Plus", "chat"),
        ("GigaChat-Pro", "chat"),
        ("GigaFilter", "filter"),
        ("GigaCheckClassification", "aicheck"),
        ("GigaCheckDetection", "aicheck"),
        ("Embeddings", "embedder"),
        ("Embeddings-2", "embedder"),
        ("EmbeddingsGigaR", "embedder"),
        ("GigaEmbeddings-3B-2025-09", "embedder"),
    ]
]

DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Permission denied",
    404: "No such model",
    413: "Request entity too large",
    422: "Invalid params: repetition_penalty must be in range (0, +inf)",
    429: "Too many requests",
    500: "Internal Server Error",
    502: "Bad gateway",
    503: "Service unavailable",
}

RQUID_RE = re.compile(r"^[0-9a-fA-F-]{36}$")
MESSAGE_ROLES = {"system", "user", "assistant", "function", "search_result", "function_in_progress"}


def default_reply(messages: list[dict[str, Any]], model: str) -> str:
    """Echo the last user message, so tests can see what reached the model."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return f"Echo: {message.get('content', '')}"
    return "Hello."


def count_tokens(text: str) -> int:
    """A crude but deterministic token count: words and punctuation runs."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def split_pieces(text: str) -> list[str]:
    """Cut an answer into stream pieces: one word with its leading spaces each."""
    return re.findall(r"\s*\S+", text) or [text]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    time: float = field(default_factory=time.time)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.body.decode()))


@dataclass
class Failure:
    status: int
    message: str
    endpoint: str | None  # "oauth", "chat", "models", ... or None for any API call
    headers: dict[str, str]
    body: Any


class FakeGigaChat:
    """The fake server. ``with FakeGigaChat() as fake:`` or ``fake = FakeGigaChat().start()``."""

    def __init__(
        self,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        scopes: Iterable[str] = ("GIGACHAT_API_PERS",),
        token_ttl_ms: int = 30 * 60 * 1000,
        models: list[dict[str, str]] | None = None,
        reply: Callable[[list[dict[str, Any]], str], str] | str = default_reply,
        chunk_delay: float = 0.0,
        oauth_rate_limit: int = 10,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.credentials = issued(base64.b64encode(f"{client_id}:{client_secret}".encode()).decode())
        issued(client_secret)
        self.scopes = set(scopes)
        self.token_ttl_ms = token_ttl_ms
        self.models = list(models or DEFAULT_MODELS)
        self.reply = reply
        self.chunk_delay = chunk_delay
        self.oauth_rate_limit = oauth_rate_limit
        self.delays: dict[str, float] = {}  # endpoint ("oauth", "chat", "models") -> seconds
        self.requests: list[RecordedRequest] = []
        self.oauth_calls = 0
        self._tokens: dict[str, int] = {}  # token -> expires_at (ms)
        self._oauth_times: deque[float] = deque()
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self._server = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeGigaChat:
        self._server = BackgroundServer(self._wsgi, name="fake-gigachat")
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FakeGigaChat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The value for ``GIGACHAT_BASE_URL``."""
        return f"{self.origin}/api/v1"

    @property
    def auth_url(self) -> str:
        """The value for ``GIGACHAT_AUTH_URL``."""
        return f"{self.origin}/api/v2/oauth"

    def settings(self) -> dict[str, object]:
        """The gateway's settings that point its GigaChat provider at this fake."""
        return {
            "GIGACHAT_CREDENTIALS": self.credentials,
            "GIGACHAT_BASE_URL": self.url,
            "GIGACHAT_AUTH_URL": self.auth_url,
            "GIGACHAT_VERIFY_SSL_CERTS": False,
        }

    # --- knobs -----------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        message: str | None = None,
        *,
        endpoint: str | None = "chat",
        count: int = 1,
        retry_after: str | int | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``count`` requests to ``endpoint`` with an error.

        ``endpoint`` is ``"oauth"``, ``"chat"``, ``"models"``, ``"tokens"`` or ``None`` for
        any API call. The body is the API's ``{"status", "message"}`` unless ``body`` is given.
        """
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        failure = Failure(status, message or DEFAULT_MESSAGES.get(status, "Error"), endpoint, headers, body)
        with self._lock:
            self._failures.extend([failure] * count)

    def expire_tokens(self) -> None:
        """Make every issued token stale, as if 30 minutes had passed on the server."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = 0

    def requests_to(self, suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies sent to ``/chat/completions``, oldest first."""
        return [r.json for r in self.requests_to("/chat/completions")]

    # --- plumbing --------------------------------------------------------------------

    def _take_failure(self, endpoint: str) -> Failure | None:
        with self._lock:
            for i, failure in enumerate(self._failures):
                if failure.endpoint == endpoint or (failure.endpoint is None and endpoint != "oauth"):
                    return self._failures.pop(i)
        return None

    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        response = Response(
            json.dumps(data, ensure_ascii=False),
            status=status,
            content_type="application/json; charset=utf-8",
        )
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    def _api_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return self._json({"status": status, "message": message}, status, headers)

    def _failure_response(self, failure: Failure) -> Response:
        if failure.body is not None:
            return self._json(failure.body, failure.status, failure.headers)
        if failure.endpoint == "oauth":
            return self._json({"code": failure.status, "message": failure.message}, failure.status, failure.headers)
        return self._api_error(failure.status, failure.message, failure.headers)

    def _wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), body))
        response = self._dispatch(request, body)
        return response(environ, start_response)

    def _dispatch(self, request: Request, body: bytes) -> Response:
        path = request.path
        endpoint = "oauth" if path == "/api/v2/oauth" else path[len("/api/v1/") :].split("/", 1)[0]
        if self.delays.get(endpoint):
            time.sleep(self.delays[endpoint])
        if path == "/api/v2/oauth":
            if request.method != "POST":
                return self._json({"code": 405, "message": "Method not allowed"}, 405)
            return self._oauth(request)
        if not path.startswith("/api/v1/"):
            return self._api_error(404, "Not found")
        route = path[len("/api/v1") :]
        failure = self._take_failure(endpoint)
        if failure is not None:
            return self._failure_response(failure)
        denied = self._check_bearer(request)
        if denied is not None:
            return denied
        if route == "/chat/completions" and request.method == "POST":
            return self._chat(request, body)
        if route == "/models" and request.method == "GET":
            return self._json({"object": "list", "data": self.models})
        if route.startswith("/models/") and request.method == "GET":
            model_id = route[len("/models/") :]
            for model in self.models:
                if model["id"] == model_id:
                    return self._json(model)
            return self._api_error(404, "No such model")
        if route == "/tokens/count" and request.method == "POST":
            return self._tokens_count(body)
        return self._api_error(404, "Not found")

    # --- OAuth -----------------------------------------------------------------------

    def _oauth(self, request: Request) -> Response:
        failure = self._take_failure("oauth")
        if failure is not None:
            return self._failure_response(failure)
        rquid = request.headers.get("RqUID", "")
        if not RQUID_RE.match(rquid):
            return self._json({"code": 400, "message": "Invalid RqUID header"}, 400)
        if request.content_length and request.mimetype != "application/x-www-form-urlencoded":
            return self._json({"code": 400, "message": "Invalid content type"}, 400)
        authorization = request.headers.get("Authorization", "")
        scheme, _, key = authorization.partition(" ")
        try:
            if scheme != "Basic":
                raise ValueError(scheme)
            decoded = base64.b64decode(key.strip(), validate=True).decode()
            client_id, sep, client_secret = decoded.partition(":")
            if not sep:
                raise ValueError("no colon")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return self._json({"code": 4, "message": "Can't decode 'Authorization' header"}, 400)
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return self._json({"code": 6, "message": "credentials doesn't match db data"}, 401)
        scope = request.form.get("scope", "")
        if not scope:
            return self._json({"code": 5, "message": "scope is empty"}, 400)
        if scope not in self.scopes:
            return self._json({"code": 7, "message": "scope from db not fully includes consumed scope"}, 400)
        now = time.time()
        with self._lock:
            while self._oauth_times and now - self._oauth_times[0] > 1.0:
                self._oauth_times.popleft()
            if len(self._oauth_times) >= self.oauth_rate_limit:
                return self._json({"code": 429, "message": "Too many requests"}, 429)
            self._oauth_times.append(now)
            token = issued("fake-jwe." + secrets.token_urlsafe(48))
            expires_at = int(now * 1000) + self.token_ttl_ms
            self._tokens[token] = expires_at
            self.oauth_calls += 1
        return self._json({"access_token": token, "expires_at": expires_at})

    def _check_bearer(self, request: Request) -> Response | None:
        authorization = request.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Bearer" or not token:
            return self._api_error(401, "Unauthorized")
        with self._lock:
            expires_at = self._tokens.get(token)
        if expires_at is None or expires_at <= time.time() * 1000:
            return self._api_error(401, "Token has expired")
        return None

    # --- API -------------------------------------------------------------------------

    def _model_ids(self, kind: str | None = None) -> set[str]:
        return {m["id"] for m in self.models if kind is None or m.get("type") == kind}

    def _validate_chat(self, payload: Any) -> Response | None:
        if not isinstance(payload, dict):
            return self._api_error(400, "Bad request: body must be a JSON object")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return self._api_error(422, "Invalid params: model is required")
        if model not in self._model_ids("chat"):
            return self._api_error(404, "No such model")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._api_error(422, "Invalid params: messages must not be empty")
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES:
                return self._api_error(422, "Invalid params: unknown message role")
            if not isinstance(message.get("content", ""), str):
                return self._api_error(422, "Invalid params: content must be a string")
        penalty = payload.get("repetition_penalty")
        if penalty is not None and (not isinstance(penalty, (int, float)) or penalty <= 0):
            return self._api_error(422, "Invalid params: repetition_penalty must be in range (0, +inf)")
        temperature = payload.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or temperature <= 0):
            return self._api_error(422, "Invalid params: temperature must be in range (0, +inf)")
        top_p = payload.get("top_p")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1):
            return self._api_error(422, "Invalid params: top_p must be in range [0, 1]")
        max_tokens = payload.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return self._api_error(422, "Invalid params: max_tokens must be positive")
        return None

    def _answer(self, payload: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        messages = payload["messages"]
        text = self.reply if isinstance(self.reply, str) else self.reply(messages, payload["model"])
        finish = "stop"
        max_tokens = payload.get("max_tokens")
        if max_tokens is not None and count_tokens(text) > max_tokens:
            pieces = split_pieces(text)
            kept: list[str] = []
            for piece in pieces:
                if count_tokens("".join([*kept, piece])) > max_tokens:
                    break
                kept.append(piece)
            text, finish = "".join(kept), "length"
        prompt_tokens = sum(count_tokens(m.get("content", "")) + 3 for m in messages)
        completion_tokens = count_tokens(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "precached_prompt_tokens": 0,
        }
        return text, finish, usage

    def _chat(self, request: Request, body: bytes) -> Response:
        if request.mimetype != "application/json":
            return self._api_error(400, "Bad request: Content-Type must be application/json")
        try:
            payload = json.loads(body)
        except ValueError:
            return self._api_error(400, "Bad request: invalid JSON")
        invalid = self._validate_chat(payload)
        if invalid is not None:
            return invalid
        text, finish, usage = self._answer(payload)
        model = f"{payload['model']}:{MODEL_VERSION}"
        created = int(time.time())
        headers = {"X-Request-Id": str(uuid.uuid4()), "X-Session-Id": str(uuid.uuid4())}
        if not payload.get("stream"):
            data = {
                "choices": [
                    {
                        "message": {"content": text, "role": "assistant"},
                        "index": 0,
                        "finish_reason": finish,
                    }
                ],
                "created": created,
                "model": model,
                "object": "chat.completion",
                "usage": usage,
            }
            return self._json(data, 200, headers)
        response = Response(
            self._sse(text, finish, usage, model, created),
            status=200,
            content_type="text/event-stream",
            direct_passthrough=True,
        )
        for key, value in headers.items():
            response.headers[key] = value
        response.headers["Cache-Control"] = "no-cache"
        return response

    def _sse(self, text: str, finish: str, usage: dict[str, int], model: str, created: int) -> Iterator[bytes]:
        def event(data: dict[str, Any]) -> bytes:
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        for i, piece in enumerate(split_pieces(text) if text else []):
            delta: dict[str, str] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            yield event(
                {
                    "choices": [{"delta": delta, "index": 0}],
                    "created": created,
                    "model": model,
                    "object": "chat.completion",
                }
            )
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
        last_delta: dict[str, str] = {"content": ""}
        if not text:
            last_delta["role"] = "assistant"
        yield event(
            {
                "choices": [{"delta": last_delta, "index": 0, "finish_reason": finish}],
                "created": created,
                "model": model,
                "object": "chat.completion",
                "usage": usage,
            }
        )
        yield b"data: [DONE]\n\n"

    def _tokens_count(self, body: bytes) -> Response:
        try:
            payload = json.loads(body)
        except ValueError:
            return self._api_error(400, "Bad request: invalid JSON")
        if payload.get("model") not in self._model_ids():
            return self._api_error(404, "No such model")
        return self._json(
            [
                {"object": "tokens", "tokens": count_tokens(text), "characters": len(text)}
                for text in payload.get("input", [])
            ]
        )


__all__ = ["DEFAULT_CREDENTIALS", "DEFAULT_MODELS", "FakeGigaChat", "RecordedRequest"]
