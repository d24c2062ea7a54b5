"""GigaChat (Sber) as a provider, through the official ``gigachat`` SDK (v1 root methods).

One long-lived SDK client per app: it caches the OAuth token, refreshes it before
``expires_at`` (milliseconds) and once on a 401, so a request costs no OAuth call while the
token is good (the seed opened a new OAuth session per request). The SDK's sync client is
httpx-based, which gevent patches cooperatively.

Settings come from ``app.config`` only (the SDK's own variable names, plus the seed's
``API_KEY``); the SDK is never left to read the process environment by itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pydantic
from gigachat import GigaChatSyncClient
from gigachat import exceptions as gexc
from gigachat.models.chat import ChatCompletion, ChatCompletionChunk
from gigachat.models.chat import Usage as GigaUsage
from gigachat.settings import Settings
from typing_extensions import override

from ..content import is_text_part, json_text, text_of
from ..errors import (
    ApiError,
    BadRequest,
    ModelNotFound,
    PaymentRequired,
    RateLimited,
    Unauthorized,
    UpstreamError,
    UpstreamUnavailable,
)
from ..events import Event, EventStream, Finished, ReasoningDelta, ResponseStarted, TextDelta, Usage
from .base import ChatRequest, ModelCard, Provider

log = logging.getLogger(__name__)

T = TypeVar("T")

# Listed when GigaChat's /models cannot be read (the chat models seen in 2026).
FALLBACK_MODELS = ("GigaChat", "GigaChat-2", "GigaChat-2-Pro", "GigaChat-2-Max")
FAILED_LIST_RETRY_SECONDS = 60.0
CONNECT_TIMEOUT = 10.0
LIST_WAIT_SECONDS = 5.0  # how long /api/models waits for GigaChat's list

# GigaChat's finish reasons -> OpenAI's.
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "function_call": "tool_calls",
    "blacklist": "content_filter",
    "error": "stop",
}

# The SDK constructor's arguments among its settings.
_CLIENT_ARGS = {
    "base_url",
    "auth_url",
    "credentials",
    "scope",
    "model",
    "timeout",
    "verify_ssl_certs",
    "ca_bundle_file",
    "max_retries",
}

NOT_CONFIGURED = (
    "GigaChat is not configured: set GIGACHAT_CREDENTIALS (the seed's API_KEY also works) to "
    "the authorization key from the Sber developer cabinet, and GIGACHAT_SCOPE to its scope "
    "(GIGACHAT_API_PERS, GIGACHAT_API_B2B or GIGACHAT_API_CORP)."
)


class _ExplicitSettings(Settings):
    """The SDK's settings, filled only from the arguments given (no environment, no .env)."""

    @classmethod
    @override
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings,)


@dataclass
class _Call:
    """One upstream call, so another thread can abort its blocked read."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    response: httpx.Response | None = None

    def cancel(self) -> None:
        self.cancelled.set()
        response = self.response
        if response is not None:
            _shutdown(response)


# The call whose HTTP response the httpx event hook should remember.
_CURRENT_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("gigachat_current_call", default=None)


def _shutdown(response: httpx.Response) -> None:
    """Wake a read blocked on ``response``'s socket (closing alone does not, across threads)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _remember_response(response: httpx.Response) -> None:
    """httpx response hook: runs once the headers are in, before the body is read."""
    call = _CURRENT_CALL.get()
    if call is not None:
        call.response = response
        if call.cancelled.is_set():
            _shutdown(response)


def _upstream_message(exc: gexc.ResponseError) -> str:
    """The ``message`` of GigaChat's error body, or a short excerpt of it."""
    content = exc.content or b""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    text = content.decode("utf-8", "replace").strip()
    return text[:200] or f"HTTP {exc.status_code}"


def _valid_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return False
    return True


class GigaChatProvider(Provider):
    """Serves the ``GigaChat*`` models; every call carries the whole conversation."""

    name = "gigachat"
    server_side_history = False

    def __init__(
        self,
        *,
        credentials: str | None,
        credentials_variable: str = "GIGACHAT_CREDENTIALS",
        scope: str = "GIGACHAT_API_PERS",
        base_url: str | None = None,
        auth_url: str | None = None,
        verify_ssl_certs: bool = True,
        ca_bundle_file: str | None = None,
        default_model: str = "GigaChat",
        timeout: float = 120.0,
        token_expiry_buffer_ms: int = 60000,
        models_cache_seconds: float = 600.0,
    ) -> None:
        self.credentials = (credentials or "").strip() or None
        self.credentials_variable = credentials_variable
        self.scope = scope or "GIGACHAT_API_PERS"
        self.default_model = default_model or "GigaChat"
        self.timeout = timeout
        self.models_cache_seconds = models_cache_seconds
        settings: dict[str, Any] = {
            "credentials": self.credentials,
            "scope": self.scope,
            "base_url": base_url or None,
            "auth_url": auth_url or None,
            "verify_ssl_certs": verify_ssl_certs,
            "ca_bundle_file": ca_bundle_file or None,
            "timeout": timeout,
            "model": self.default_model,
            "max_retries": 0,  # clients and the gateway decide about retries
            "token_expiry_buffer_ms": token_expiry_buffer_ms,
        }
        self._settings = _ExplicitSettings(**{k: v for k, v in settings.items() if v is not None})
        self._client: GigaChatSyncClient | None = None
        self._lock = threading.Lock()
        self._models: list[ModelCard] | None = None
        self._models_until = 0.0
        self._models_fetch: threading.Event | None = None
        self._last_error: str | None = None
        if self.credentials and not _valid_base64(self.credentials):
            log.warning(
                "%s does not look like base64; GigaChat expects the authorization key "
                "(base64 of client_id:client_secret), not the client secret",
                credentials_variable,
            )

    @classmethod
    def from_app(cls, app: Any) -> GigaChatProvider:
        """Build from ``app.config``; ``GIGACHAT_CREDENTIALS`` wins over the seed's ``API_KEY``."""
        config = app.config
        credentials, variable = config.get("GIGACHAT_CREDENTIALS"), "GIGACHAT_CREDENTIALS"
        if not credentials and config.get("API_KEY"):
            credentials, variable = config.get("API_KEY"), "API_KEY"
        return cls(
            credentials=credentials,
            credentials_variable=variable,
            scope=config.get("GIGACHAT_SCOPE") or "GIGACHAT_API_PERS",
            base_url=config.get("GIGACHAT_BASE_URL"),
            auth_url=config.get("GIGACHAT_AUTH_URL"),
            verify_ssl_certs=bool(config.get("GIGACHAT_VERIFY_SSL_CERTS", True)),
            ca_bundle_file=config.get("GIGACHAT_CA_BUNDLE_FILE"),
            default_model=config.get("GIGACHAT_MODEL") or "GigaChat",
            timeout=float(config.get("GIGACHAT_TIMEOUT") or 120.0),
            token_expiry_buffer_ms=int(config.get("GIGACHAT_TOKEN_EXPIRY_BUFFER_MS", 60000)),
            models_cache_seconds=float(config.get("MODELS_CACHE_SECONDS") or 600),
        )

    # --- the SDK client --------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self.credentials)

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def auth_url(self) -> str:
        return self._settings.auth_url

    def _verify(self) -> ssl.SSLContext | bool:
        if self._settings.ca_bundle_file:
            return ssl.create_default_context(cafile=self._settings.ca_bundle_file)
        return self._settings.verify_ssl_certs

    def client(self) -> GigaChatSyncClient:
        """The app's one SDK client, built on first use (no network at start-up)."""
        if not self.configured:
            raise UpstreamUnavailable(NOT_CONFIGURED, code="gigachat_not_configured")
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._build_client()
                    except Exception as exc:
                        log.error("cannot set up the GigaChat client: %s", type(exc).__name__)
                        raise UpstreamUnavailable(
                            f"GigaChat client settings are invalid ({type(exc).__name__}); check the "
                            "GIGACHAT_* settings, GIGACHAT_CA_BUNDLE_FILE in particular.",
                            code="gigachat_not_configured",
                        ) from exc
        return self._client

    def _build_client(self) -> GigaChatSyncClient:
        values = self._settings.model_dump(include=_CLIENT_ARGS, exclude_none=True)
        client = GigaChatSyncClient(**values)
        # The constructor fills gaps from GIGACHAT_* in the process environment; replace its
        # settings by ours so only app.config counts.
        client._settings = self._settings
        client._access_token = None
        verify = self._verify()
        # Connecting should fail fast; reading may take as long as a long answer does.
        timeout = httpx.Timeout(self._settings.timeout, connect=min(CONNECT_TIMEOUT, self._settings.timeout))
        # Our own API transport, to see each response and abort it on cancel.
        client._client_instance = httpx.Client(
            base_url=self._settings.base_url,
            verify=verify,
            timeout=timeout,
            event_hooks={"response": [_remember_response]},
        )
        client._auth_client_instance = httpx.Client(verify=verify, timeout=timeout)
        return client

    def _ensure_token(self, client: GigaChatSyncClient) -> None:
        """Fetch a token now if the cached one is missing or expiring, so an OAuth failure
        is told apart from an API failure (it names the variable to fix)."""
        try:
            client.get_token()
        except Exception as exc:
            raise self._auth_error(exc) from exc

    def _auth_error(self, exc: Exception) -> ApiError:
        """Map a failure of the OAuth endpoint."""
        if isinstance(exc, gexc.RateLimitError):
            return RateLimited("GigaChat OAuth: too many token requests", retry_after=exc.retry_after or None)
        if isinstance(exc, (gexc.ServerError, httpx.TransportError)):
            return UpstreamUnavailable(f"GigaChat OAuth is unavailable: {self._describe(exc)}")
        if isinstance(exc, gexc.ResponseError):
            self._last_error = f"OAuth {exc.status_code}: {_upstream_message(exc)}"
            return Unauthorized(
                f"GigaChat rejected the credentials ({_upstream_message(exc)}). Check "
                f"{self.credentials_variable} (the authorization key, base64 of "
                f"client_id:client_secret) and GIGACHAT_SCOPE (now {self.scope}).",
                status=401,
                type="authentication_error",
                code="upstream_unauthorized",
            )
        return self._map_error(exc)

    @staticmethod
    def _describe(exc: Exception) -> str:
        if isinstance(exc, gexc.ResponseError):
            return f"HTTP {exc.status_code}: {_upstream_message(exc)}"
        return f"{type(exc).__name__}: {exc}"

    def _map_response_error(self, exc: gexc.ResponseError, model: str | None) -> ApiError:
        """An HTTP error answer of GigaChat (or of its auth endpoint) -> a typed error."""
        if str(exc.url) == self._settings.auth_url:  # the SDK re-authenticated and failed
            return self._auth_error(exc)
        message = _upstream_message(exc)
        self._last_error = f"HTTP {exc.status_code}: {message}"
        if isinstance(exc, gexc.AuthenticationError):
            return Unauthorized(
                f"GigaChat refused a fresh access token ({message}); check "
                f"{self.credentials_variable} and GIGACHAT_SCOPE.",
                status=401,
                type="authentication_error",
                code="upstream_unauthorized",
            )
        if exc.status_code == 402:
            return PaymentRequired(f"GigaChat: payment required ({message}).")
        if isinstance(exc, gexc.NotFoundError):
            return ModelNotFound(f"The model {model!r} does not exist at GigaChat ({message}).", param="model")
        if isinstance(exc, gexc.UnprocessableEntityError):
            return BadRequest(f"GigaChat: {message}", status=422, code="invalid_params")
        if isinstance(exc, gexc.BadRequestError):
            return BadRequest(f"GigaChat: {message}")
        if isinstance(exc, gexc.RequestEntityTooLargeError):
            return BadRequest(f"GigaChat: {message}", status=413, code="request_too_large")
        if isinstance(exc, gexc.ForbiddenError):
            return ApiError(f"GigaChat: {message}", status=403, type="permission_error", code="forbidden")
        if isinstance(exc, gexc.RateLimitError):
            return RateLimited(f"GigaChat: {message}", retry_after=exc.retry_after or None)
        if isinstance(exc, gexc.ServerError):
            return UpstreamError(f"GigaChat failed: HTTP {exc.status_code}: {message}")
        return UpstreamError(f"GigaChat answered HTTP {exc.status_code}: {message}")

    def _map_error(self, exc: Exception, model: str | None = None) -> ApiError:
        """SDK and transport exceptions -> the gateway's typed errors (by type and status)."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, gexc.ResponseError):
            return self._map_response_error(exc, model)
        if isinstance(exc, httpx.TimeoutException):
            self._last_error = f"timeout: {exc}"
            return UpstreamUnavailable(f"GigaChat did not answer within {self.timeout:g} s", code="upstream_timeout")
        if isinstance(exc, httpx.HTTPError):
            self._last_error = f"{type(exc).__name__}: {exc}"
            return UpstreamUnavailable(f"Cannot reach GigaChat: {type(exc).__name__}: {exc}")
        if isinstance(exc, (gexc.GigaChatException, pydantic.ValidationError, ValueError)):
            return UpstreamError(f"Unexpected answer from GigaChat: {type(exc).__name__}: {exc}")
        return UpstreamError(f"GigaChat call failed: {type(exc).__name__}")

    def _guarded(self, call: _Call, model: str, fn: Callable[[], T]) -> T:
        """Run one SDK step with ``call`` current (for the response hook), mapping errors."""
        token = _CURRENT_CALL.set(call)
        try:
            return fn()
        except StopIteration:
            raise
        except Exception as exc:
            if call.cancelled.is_set():
                raise _Cancelled() from exc
            raise self._map_error(exc, model) from exc
        finally:
            _CURRENT_CALL.reset(token)

    # --- Provider interface ----------------------------------------------------------

    def owns(self, model: str) -> bool:
        return model.lower().startswith("gigachat")

    def resolve_model(self, model: str | None) -> str:
        return model or self.default_model

    def list_models(self) -> list[ModelCard]:
        """GigaChat's chat models from its ``/models`` (cached).

        The fetch runs aside and is waited for a few seconds only, so a slow or unreachable
        GigaChat never holds ``/api/models`` for the whole request timeout; meanwhile the
        last list (or a built-in one) is answered.
        """
        if not self.configured:
            return []
        if self._models is not None and time.monotonic() < self._models_until:
            return self._models
        with self._lock:
            done = self._models_fetch
            if done is None:
                done = self._models_fetch = threading.Event()
                threading.Thread(target=self._fetch_models, args=(done,), name="gigachat-models", daemon=True).start()
        done.wait(min(LIST_WAIT_SECONDS, self.timeout))
        return self._models or [ModelCard(id=m, owned_by="salutedevices") for m in FALLBACK_MODELS]

    def _fetch_models(self, done: threading.Event) -> None:
        try:
            client = self.client()
            self._ensure_token(client)
            listing = self._guarded(_Call(), "", client.get_models)
            self._models = [
                ModelCard(id=m.id_, owned_by=m.owned_by or "salutedevices") for m in listing.data if self.owns(m.id_)
            ]
            self._models_until = time.monotonic() + self.models_cache_seconds
        except Exception as exc:  # listing must never fail the route
            log.warning("cannot list GigaChat models, using the built-in list: %s", exc)
            if self._models is None:
                self._models = [ModelCard(id=m, owned_by="salutedevices") for m in FALLBACK_MODELS]
            self._models_until = time.monotonic() + min(FAILED_LIST_RETRY_SECONDS, self.models_cache_seconds)
        finally:
            with self._lock:
                self._models_fetch = None
            done.set()

    def open_stream(self, request: ChatRequest) -> EventStream:
        """Start a completion; errors before the first event are raised from here."""
        client = self.client()
        model = self.resolve_model(request.model)
        payload = self._payload(request, model)
        self._ensure_token(client)
        call = _Call()
        info = {"provider": self.name, "model": model}
        if request.stream:
            chunks = client.stream(payload)
            try:
                first = self._guarded(call, model, lambda: next(chunks))
            except StopIteration:
                first = None
            x_headers = first.x_headers if first is not None else None
            events = self._stream_events(chunks, first, call, model)
        else:
            completion = self._guarded(call, model, lambda: client.chat(payload))
            x_headers = completion.x_headers
            events = self._completion_events(completion)
        # GigaChat's own ids of the exchange, for logs and support requests.
        info["upstream_request_id"] = (x_headers or {}).get("x-request-id")
        return EventStream(events, on_cancel=call.cancel, info=info)

    def status(self) -> dict[str, Any]:
        token = self._client._access_token if self._client is not None else None
        return {
            "name": self.name,
            "configured": self.configured,
            "credentials_variable": self.credentials_variable if self.configured else None,
            "scope": self.scope,
            "base_url": self.base_url,
            "default_model": self.default_model,
            "token_expires_at": token.expires_at if token is not None else None,
            "last_error": self._last_error,
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- wire conversion -------------------------------------------------------------

    def _payload(self, request: ChatRequest, model: str) -> dict[str, Any]:
        """An OpenAI-style request -> the v1 GigaChat chat JSON."""
        payload: dict[str, Any] = {
            "model": model,
            "messages": [self._message(m) for m in request.messages],
        }
        if request.temperature is not None:
            # GigaChat wants > 0; (0, 0.001] is its deterministic mode, OpenAI's 0.
            payload["temperature"] = max(float(request.temperature), 0.001)
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        for key in ("repetition_penalty", "update_interval", "profanity_check"):
            if request.options.get(key) is not None:
                payload[key] = request.options[key]
        if request.tools:
            log.info("GigaChat provider ignores %d tool definitions", len(request.tools))
        if request.stop:
            log.debug("GigaChat has no stop sequences; ignoring %r", request.stop)
        return payload

    @staticmethod
    def _message(message: dict[str, Any]) -> dict[str, Any]:
        role = message.get("role") or "user"
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if not (is_text_part(part) or isinstance(part, str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise BadRequest(f"GigaChat models take text only here, not {kind!r} parts", param="messages")
        content = text_of(content, joiner="\n", bare_strings=True, other=json_text)
        if role == "developer":
            role = "system"
        out: dict[str, Any] = {"role": role, "content": content}
        if role == "tool":  # an OpenAI tool result -> GigaChat's function result (JSON)
            out["role"] = "function"
            try:
                json.loads(content)
            except ValueError:
                out["content"] = json.dumps({"result": content}, ensure_ascii=False)
            if message.get("name"):
                out["name"] = message["name"]
        return out

    @staticmethod
    def _usage(usage: GigaUsage) -> Usage:
        return Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            raw=usage.model_dump(exclude_none=True),
        )

    def _completion_events(self, completion: ChatCompletion) -> Iterator[Event]:
        yield ResponseStarted()
        choice = completion.choices[0] if completion.choices else None
        if choice is not None:
            if choice.message.reasoning_content:
                yield ReasoningDelta(choice.message.reasoning_content)
            if choice.message.content:
                yield TextDelta(choice.message.content)
        yield self._usage(completion.usage)
        reason = choice.finish_reason if choice is not None else None
        yield Finished(FINISH_REASONS.get(reason or "stop", "stop"))

    def _stream_events(
        self,
        chunks: Iterator[ChatCompletionChunk],
        first: ChatCompletionChunk | None,
        call: _Call,
        model: str,
    ) -> Iterator[Event]:
        yield ResponseStarted()
        finish: str | None = None
        chunk = first
        try:
            while chunk is not None:
                for choice in chunk.choices[:1]:
                    if choice.delta.reasoning_content:
                        yield ReasoningDelta(choice.delta.reasoning_content)
                    if choice.delta.content:
                        yield TextDelta(choice.delta.content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
                if chunk.usage is not None:
                    yield self._usage(chunk.usage)
                if call.cancelled.is_set():
                    return
                try:
                    chunk = self._guarded(call, model, lambda: next(chunks))
                except StopIteration:
                    chunk = None
        except _Cancelled:
            return
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # closing a broken stream
                    log.debug("closing the GigaChat stream: %s", exc)
        yield Finished(FINISH_REASONS.get(finish or "stop", "stop"))


class _Cancelled(Exception):
    """The read failed because the stream was cancelled: end quietly."""


__all__ = ["FALLBACK_MODELS", "GigaChatProvider"]
