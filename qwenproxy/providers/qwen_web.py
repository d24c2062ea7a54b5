"""Qwen web (chat.qwen.ai) as a provider: one account per request, retried on quota/expiry."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from flask import Flask

from .. import tools
from ..accounts import AccountPool, TokenPool
from ..catalog import ModelCatalog
from ..errors import RateLimited, Unauthorized, UpstreamError
from ..events import Event, EventStream, ResponseStarted
from ..qwen import modes
from ..qwen.client import QwenClient
from ..qwen.protocol import completion_body
from ..qwen.transport import DirectTransport, Transport
from .base import ChatRequest, ModelCard, Provider

log = logging.getLogger(__name__)


def make_transport(config: dict[str, Any]) -> Transport:
    """The transport ``QWEN_TRANSPORT`` names."""
    kind = str(config.get("QWEN_TRANSPORT", "direct")).lower()
    if kind != "direct":
        log.warning("QWEN_TRANSPORT=%s is not available in this build; using direct", kind)
    return DirectTransport(float(config["QWEN_CONNECT_TIMEOUT"]), float(config["QWEN_READ_TIMEOUT"]))


def last_user_turn(messages: list[dict[str, Any]]) -> tuple[Any, str | None]:
    """The last user message's content and the first system message (seed §7.2/7.3)."""
    content: Any = None
    system: str | None = None
    for message in messages:
        role = message.get("role")
        if role == "system" and system is None:
            system = text_of(message.get("content"))
        elif role == "user":
            content = message.get("content")
    return content, system


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return "" if content is None else str(content)


def to_qwen_content(content: Any) -> str | list[dict[str, Any]]:
    """A user message's content as Qwen's inline shape (§5.4): a string, or text/image items."""
    if not isinstance(content, list):
        return text_of(content)
    items: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "input_text"):
            items.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image" and part.get("image"):
            items.append({"type": "image", "image": part["image"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if url:
                items.append({"type": "image", "image": url})
        elif kind == "video" and part.get("video"):
            items.append({"type": "video", "video": part["video"]})
        elif kind == "file" and part.get("file"):
            items.append({"type": "file", "file": part["file"]})
    if all(i["type"] == "text" for i in items):
        return "".join(i["text"] for i in items)
    return items


class QwenWebProvider(Provider):
    name = "qwen"
    server_side_history = True

    def __init__(self, client: QwenClient, pool: AccountPool, catalog: ModelCatalog, max_attempts: int = 5) -> None:
        self.client = client
        self.pool = pool
        self.catalog = catalog
        self.max_attempts = max_attempts

    @classmethod
    def from_app(cls, app: Flask) -> QwenWebProvider:
        config = app.config
        pool = app.extensions.get("account_pool")
        if pool is None:
            tokens = [t.strip() for t in str(config.get("QWEN_TOKEN") or "").split(",") if t.strip()]
            pool = TokenPool(tokens)
            app.extensions["account_pool"] = pool
        client = QwenClient(make_transport(config), config)
        catalog = ModelCatalog(
            config["MODELS_FILE"],
            config["DEFAULT_MODEL"],
            fetch=lambda: client.list_models(pool.any_token()),
            ttl=float(config["MODELS_CACHE_SECONDS"]),
        )
        return cls(client, pool, catalog)

    # --- names
    def owns(self, model: str) -> bool:
        return self.catalog.known(model)

    def resolve_model(self, model: str | None) -> str:
        return self.catalog.resolve(model)

    def resolve_request(self, model: str | None) -> tuple[str, str, dict[str, Any]]:
        """``qwen3-max-thinking`` → (``qwen3-max``, ``qwen3-max-thinking``, {thinking}) (modes.py)."""
        resolved, flags = self.catalog.resolve_modes(model)
        return resolved, resolved + flags.suffix(), flags.options()

    def list_models(self) -> list[ModelCard]:
        upstream = {str(m["id"]): m for m in (self.catalog.upstream_models() or [])}
        cards = []
        variants = []
        for mid in self.catalog.ids():
            created = int((upstream.get(mid) or {}).get("info", {}).get("created_at") or 0)
            cards.append(ModelCard(id=mid, owned_by="qwen", created=created))
            if mid in upstream:  # the modes a model supports, from its capabilities/chat_type
                variants += [ModelCard(id=v, owned_by="qwen", created=created) for v in modes.variants(upstream[mid])]
        return cards + variants

    # --- chat
    def open_stream(self, request: ChatRequest) -> EventStream:
        stream = EventStream(iter(()))
        current: dict[str, Any] = {}

        def cancel() -> None:
            response = current.get("response")
            if response is not None:
                response.close()

        stream.events = self._events(request, stream, current)
        spec = tools.ToolSpec.parse(request.tools, request.tool_choice, request.options.get("parallel_tool_calls"))
        if spec.active:

            def retry(started: ResponseStarted | None) -> Iterator[Event]:
                again = replace(
                    request,
                    messages=[{"role": "user", "content": tools.RETRY_PROMPT}],
                    conversation_id=stream.info.get("upstream_chat_id"),
                    parent_id=started.response_id if started else None,
                    account_id=stream.info.get("account_id"),
                )
                return self._events(again, stream, current)

            stream.events = tools.ToolCallFilter(stream.events, spec, retry=retry)
        stream.on_cancel = cancel
        return stream

    @staticmethod
    def _turn(request: ChatRequest, continuing: bool) -> tuple[Any, str | None]:
        """The user content and system message of this turn; with tools, the tool prompt
        and the earlier calls and results are written into it (tools.fold_turn)."""
        spec = tools.ToolSpec.parse(request.tools, request.tool_choice, request.options.get("parallel_tool_calls"))
        if tools.engaged(request.messages, spec):
            return tools.fold_turn(request.messages, spec, continuing=continuing)
        return last_user_turn(request.messages)

    def _events(self, request: ChatRequest, stream: EventStream, current: dict[str, Any]) -> Iterator[Event]:
        content, system = last_user_turn(request.messages)
        chat_type, features, extra = modes.upstream_mode(request.options)
        if content is None:
            from ..errors import BadRequest

            raise BadRequest("No user message to send", param="messages")
        tried: set[str] = set()
        last_error: Exception | None = None
        for _attempt in range(self.max_attempts):
            account = self.pool.acquire(prefer=request.account_id, exclude=tried)
            # a conversation lives in the account that created it upstream
            same_account = request.account_id in (None, account.id)
            chat_id = request.conversation_id if same_account else None
            parent_id = request.parent_id if chat_id else None
            content, system = self._turn(request, continuing=bool(chat_id and parent_id))
            try:
                if not chat_id:
                    chat_id = self.client.create_chat(
                        account.token,
                        request.model,
                        chat_type=chat_type,
                        account_id=account.id,
                    )
                body = completion_body(
                    chat_id=chat_id,
                    model=request.model,
                    content=to_qwen_content(content),
                    parent_id=parent_id,
                    system=system,
                    files=request.options.get("files"),
                    chat_type=chat_type,
                    feature_config=features,
                    extra=extra,
                )
                events, response = self.client.open_completion(account.token, body, account_id=account.id)
            except RateLimited as exc:
                log.warning("account %s rate limited; trying another", account.id)
                self.pool.mark_rate_limited(account.id, getattr(exc, "hours", None))
                tried.add(account.id)
                last_error = exc
                continue
            except Unauthorized as exc:
                log.warning("account %s unauthorized; trying another", account.id)
                self.pool.mark_invalid(account.id, exc.message)
                tried.add(account.id)
                last_error = exc
                continue
            stream.info.update(
                account_id=account.id, upstream_chat_id=chat_id, transport=response.served_by or "direct"
            )
            current["response"] = response
            try:
                for event in events:
                    if isinstance(event, ResponseStarted) and not event.chat_id:
                        event = ResponseStarted(chat_id, event.parent_id, event.response_id)
                    yield event
                self.pool.mark_success(account.id)
            finally:
                response.close()
                self.pool.release(account.id)
            return
        raise last_error or UpstreamError("No Qwen account could serve the request")

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "accounts": self.pool.status(), "transport": self.client.transport.name}

    def close(self) -> None:
        self.client.transport.close()
