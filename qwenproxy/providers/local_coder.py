"""The local Qwen2.5-Coder (GPTQ) provider: talks to the ``workers.inference`` worker over HTTP.

The model never runs in a web process: this module imports no torch. It streams the worker's
``POST /v1/stream`` (NDJSON) with ``requests``, which gevent makes cooperative, and turns each
line into events. Closing the response (``EventStream.cancel``) makes the worker stop at the
next token. ``LOCAL_MODEL_URL`` may be ``http://host:port`` or ``unix:///path/to.sock``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from typing_extensions import override

from ..content import text_of
from ..errors import BadRequest, ContextTooLong, UpstreamError, UpstreamUnavailable
from ..events import Event, EventStream, Finished, ResponseStarted, TextDelta, Usage
from ..netutil import UnixSocketAdapter, abort_response, unix_base_url
from .base import ChatRequest, ModelCard, Provider

log = logging.getLogger(__name__)

HOW_TO_START = "start it with `python -m workers.inference -m PATH` or set LOCAL_MODEL_PATH"


# -- the provider ----------------------------------------------------------------------------


class LocalCoderProvider(Provider):
    """Model ``qwen2.5-coder-local`` (and the checkpoint folder's name) on the local worker."""

    name = "local"
    server_side_history = False

    def __init__(
        self,
        url: str = "http://127.0.0.1:8001",
        model_name: str = "qwen2.5-coder-local",
        model_path: str | None = None,
        system_prompt: str | None = None,
        defaults: dict[str, Any] | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 600.0,
    ) -> None:
        self.url = url
        self.base = unix_base_url(url)
        self.model_name = model_name
        self.model_path = model_path
        self.folder_name = Path(model_path).expanduser().name if model_path else None
        self.system_prompt = system_prompt
        self.defaults = dict(defaults or {})
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        self.session.trust_env = False  # loopback: never through a proxy from the environment
        if self.base.startswith("http+unix://"):
            self.session.mount("http+unix://", UnixSocketAdapter())
        self._worker_model: str | None = None  # the name the worker reports, learnt from /health
        self._health_cache: tuple[float, dict[str, Any]] | None = None

    @classmethod
    def from_app(cls, app: Any) -> LocalCoderProvider:
        cfg = app.config
        url = cfg.get("LOCAL_MODEL_URL") or "http://127.0.0.1:8001"
        if cfg.get("QWEN_SERVER_URL") and url == "http://127.0.0.1:8001":
            url = cfg["QWEN_SERVER_URL"]  # the seed's variable
        defaults = {
            "max_tokens": cfg.get("LOCAL_MODEL_MAX_TOKENS"),
            "temperature": cfg.get("LOCAL_MODEL_TEMPERATURE"),
            "top_p": cfg.get("LOCAL_MODEL_TOP_P"),
            "top_k": cfg.get("LOCAL_MODEL_TOP_K"),
            "repetition_penalty": cfg.get("LOCAL_MODEL_REPETITION_PENALTY"),
        }
        return cls(
            url=url,
            model_name=cfg.get("LOCAL_MODEL_NAME") or "qwen2.5-coder-local",
            model_path=cfg.get("LOCAL_MODEL_PATH"),
            system_prompt=cfg.get("DEFAULT_SYSTEM_PROMPT"),
            defaults={k: v for k, v in defaults.items() if v is not None},
            connect_timeout=float(cfg.get("LOCAL_MODEL_CONNECT_TIMEOUT") or 3.0),
            read_timeout=float(cfg.get("LOCAL_MODEL_READ_TIMEOUT") or 600.0),
        )

    # -- names -------------------------------------------------------------------------------

    def _names(self) -> list[str]:
        names = [self.model_name]
        for extra in (self.folder_name, self._worker_model):
            if extra and extra not in names:
                names.append(extra)
        return names

    def owns(self, model: str) -> bool:
        return model.lower() in {n.lower() for n in self._names()}

    @override
    def resolve_model(self, model: str | None) -> str:
        return self.model_name

    def list_models(self) -> list[ModelCard]:
        """Listed when a checkpoint is configured or a worker answers (never raises)."""
        if not self.model_path and not self._health(max_age=10.0).get("reachable"):
            return []
        return [ModelCard(id=name, owned_by="local") for name in self._names()]

    # -- health ------------------------------------------------------------------------------

    def _health(self, max_age: float = 0.0, timeout: float = 2.0) -> dict[str, Any]:
        now = time.monotonic()
        if max_age and self._health_cache and now - self._health_cache[0] < max_age:
            return self._health_cache[1]
        try:
            resp = self.session.get(self.base + "/health", timeout=(min(timeout, self.timeout[0]), timeout))
            body = resp.json() if resp.content else {}
            body["reachable"] = True
            body["http_status"] = resp.status_code
        except (requests.RequestException, ValueError) as exc:
            body = {"reachable": False, "detail": str(exc)}
        if body.get("model"):
            self._worker_model = str(body["model"])
        self._health_cache = (now, body)
        return body

    def status(self) -> dict[str, Any]:
        """The worker's health, with the seed's ``/qwen/status`` keys (available, model_loaded,
        status = healthy | loading | "Server returned status code N" | "Connection error: …")."""
        health = self._health(timeout=5.0)
        out: dict[str, Any] = {"name": self.name, "url": self.url, "model": self.model_name}
        if not health.get("reachable"):
            out.update(available=False, model_loaded=False, status=f"Connection error: {health.get('detail')}")
            out["hint"] = f"The local model worker is not running; {HOW_TO_START}"
            return out
        loaded = bool(health.get("model_loaded"))
        worker_status = health.get("status")
        if loaded:
            text = "healthy"
        elif worker_status in ("loading", "error"):
            text = worker_status
        else:
            text = f"Server returned status code {health.get('http_status')}"
        out.update(available=True, model_loaded=loaded, status=text)
        for key in (
            "queue",
            "active",
            "parallel",
            "stage",
            "cache",
            "max_seq_len",
            "device",
            "dtype",
            "kernel",
            "kernel_detail",
            "batch",
            "max_queue",
            "memory",
            "error",
        ):
            if key in health:
                out[key] = health[key]
        out["checkpoint"] = health.get("model")
        return out

    # -- completions -------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        opts = request.options or {}
        body: dict[str, Any] = dict(self.defaults)
        for key, value in (
            ("max_tokens", request.max_tokens),
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("stop", request.stop),
            ("top_k", opts.get("top_k")),
            ("repetition_penalty", opts.get("repetition_penalty")),
            ("min_tokens", opts.get("min_tokens")),
        ):
            if value is not None:
                body[key] = value
        body["messages"] = [_plain_message(m) for m in request.messages]
        system = opts.get("system_prompt", self.system_prompt)
        if system:
            body["system"] = system
        body["id"] = f"chatcmpl-local-{uuid.uuid4().hex[:24]}"
        return body

    def open_stream(self, request: ChatRequest) -> EventStream:
        """POST to the worker now (errors raise here); events follow as the worker sends lines."""
        body = self._body(request)
        try:
            resp = self.session.post(self.base + "/v1/stream", json=body, stream=True, timeout=self.timeout)
        except requests.ConnectionError as exc:
            raise UpstreamUnavailable(f"The local model worker at {self.url} is not running ({HOW_TO_START})") from exc
        except requests.Timeout as exc:
            raise UpstreamUnavailable(f"The local model worker at {self.url} did not answer in time") from exc
        if resp.status_code != 200:
            _raise_for(resp, self.url)
        state = {"cancelled": False}

        def cancel() -> None:
            state["cancelled"] = True
            _abort(resp)

        return EventStream(
            events=self._events(resp, state),
            on_cancel=cancel,
            info={"transport": "local-worker", "worker": self.url},
        )

    def _events(self, resp: requests.Response, state: dict[str, bool]) -> Iterator[Event]:
        ended = False
        try:
            for line in _ndjson(resp):
                kind = line.get("type")
                if kind == "start":
                    yield ResponseStarted(response_id=line.get("id"))
                elif kind == "text":
                    if line.get("text"):
                        yield TextDelta(line["text"])
                elif kind == "end":
                    ended = True
                    n_in, n_out = int(line.get("prompt_tokens") or 0), int(line.get("completion_tokens") or 0)
                    yield Usage(prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out, raw=line)
                    yield Finished(reason=line.get("finish_reason") or "stop")
                    return
                elif kind == "error":
                    raise UpstreamError(f"Local model: {line.get('message')}")
                # "queued" and unknown kinds: keep-alives
        except (requests.RequestException, OSError, ValueError, AttributeError) as exc:
            # AttributeError: a cancel from another thread closed the response under the read
            # (http.client sets its fp to None)
            if state["cancelled"]:
                return
            raise UpstreamError(f"The local model worker went away mid-generation ({exc})") from exc
        finally:
            resp.close()
        if not ended and not state["cancelled"]:
            raise UpstreamError("The local model worker went away mid-generation (stream ended without an end line)")

    def close(self) -> None:
        self.session.close()


def _plain_message(message: dict[str, Any]) -> dict[str, str]:
    """The worker takes ``{role, content: str}``; OpenAI parts are reduced to their text."""
    return {"role": str(message.get("role") or "user"), "content": text_of(message.get("content"))}


def _ndjson(resp: requests.Response) -> Iterator[dict[str, Any]]:
    """Lines of the worker's NDJSON body as they arrive (each HTTP chunk is read at once)."""
    buffer = b""
    for chunk in resp.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            if raw.strip():
                yield json.loads(raw)
    if buffer.strip():
        yield json.loads(buffer)


def _abort(resp: requests.Response) -> None:
    """Close the worker connection so that a blocked read returns and the worker sees EOF."""
    abort_response(resp)


def _raise_for(resp: requests.Response, url: str) -> None:
    try:
        err = resp.json().get("error") or {}
    except ValueError:
        err = {}
    message = err.get("message") or resp.text[:200] or f"HTTP {resp.status_code}"
    code = err.get("code")
    resp.close()
    if resp.status_code == 503:
        retry = resp.headers.get("Retry-After")  # the worker's batch and waiting line are full
        headers = {"Retry-After": retry} if retry else None
        raise UpstreamUnavailable(f"The local model at {url} is not ready: {message}", headers=headers)
    if code == "context_length_exceeded":
        raise ContextTooLong(message, param="messages")
    if resp.status_code == 400:
        raise BadRequest(f"Local model: {message}")
    raise UpstreamError(f"Local model worker answered HTTP {resp.status_code}: {message}")
