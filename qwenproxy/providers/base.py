"""The one small interface every upstream implements, and the registry that picks one.

A provider knows nothing of Flask: it takes a ``ChatRequest`` and returns an
``EventStream`` of ``qwenproxy.events``; errors are the typed ones of ``qwenproxy.errors``.
Adding a provider means one module with one class plus one line in ``providers/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest
from ..events import EventStream, TaskState


@dataclass
class ChatRequest:
    """What a route asks of a provider, already validated and normalised."""

    model: str  # the model id the provider will use (aliases already resolved)
    messages: list[dict[str, Any]]  # OpenAI-format messages; providers with server-side
    # history (Qwen web) send only the last user turn, the others send them all
    stream: bool = False
    requested_model: str | None = None  # what the client asked for, before resolution
    conversation_id: str | None = None  # upstream conversation (Qwen chat_id)
    parent_id: str | None = None  # upstream message to continue from (Qwen parent_id)
    account_id: str | None = None  # account the conversation is pinned to, if any
    # Stateless history (serving/history.py): how many leading ``messages`` the upstream chat
    # ``conversation_id`` already holds; the provider folds the rest before the new turn into
    # a transcript (all of it in a new chat). None: only the new turn is sent (chatId clients).
    upstream_known: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    tool_spec: Any = None  # ``tools``/``tool_choice`` parsed once (wire.tools.ToolSpec), when the route did
    options: dict[str, Any] = field(default_factory=dict)  # provider-specific extras; the modes
    # (docs/MODES.md) use thinking, thinking_budget, search, image, image_size, parallel_tool_calls
    request_id: str = ""
    # the whole conversation as stored locally (OpenAI messages, this turn included), read
    # only when a provider must move it to a new upstream chat (Qwen's "in progress", 2026 §3)
    history: Callable[[], list[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class MediaTask:
    """A media task a provider started upstream (a Qwen ``t2v`` video): what it takes to ask
    about it later, from any worker."""

    task_id: str
    account_id: str | None = None  # the account that owns the task upstream
    chat_id: str | None = None
    parent_id: str | None = None  # the upstream user message
    response_id: str | None = None  # the upstream answer that will hold the video


@dataclass(frozen=True)
class ModelCard:
    """One entry of ``GET /api/models``."""

    id: str
    owned_by: str
    created: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Provider(ABC):
    """One upstream. Subclasses set ``name`` and implement the abstract methods."""

    name: str = ""
    # True when the upstream keeps the conversation (Qwen web: chat_id + parent_id), so a
    # continuing turn sends only the new message; False when every call carries the history.
    server_side_history: bool = False

    @abstractmethod
    def owns(self, model: str) -> bool:
        """Whether a requested model name belongs to this provider. Cheap: from its own names
        and prefixes only, never a network call (the registry asks it for every request)."""

    def resolve_model(self, model: str | None) -> str:
        """Map an alias or a missing name to the id sent upstream."""
        return model or ""

    def resolve_request(self, model: str | None) -> tuple[str, str, dict[str, Any]]:
        """``(id sent upstream, name shown to the client, options)`` for a requested name.

        Providers with mode suffixes (Qwen's ``-thinking``) strip them here and return the
        mode as ``ChatRequest.options`` flags; the default has no suffixes."""
        resolved = self.resolve_model(model)
        return resolved, resolved, {}

    @abstractmethod
    def list_models(self) -> list[ModelCard]:
        """The models to list; must not raise when the upstream is unreachable."""

    @abstractmethod
    def open_stream(self, request: ChatRequest) -> EventStream:
        """Start a completion. Errors before the first event are raised from here or from
        the first ``next()``; later ones are raised from the iteration."""

    def start_video(self, request: ChatRequest) -> MediaTask:
        """Start a video task from the last user message (text, maybe an image); providers
        without videos refuse."""
        raise BadRequest(f"Model {request.model!r} cannot generate videos", param="model", code="video_unsupported")

    def video_status(self, task: MediaTask) -> TaskState:  # noqa: ARG002 - the interface
        """Ask the upstream once where ``task`` stands."""
        raise BadRequest("This provider has no video tasks", code="video_unsupported")

    def status(self) -> dict[str, Any]:
        """A JSON-able health summary for ``/api/status``."""
        return {"name": self.name}

    def close(self) -> None:
        """Release long-lived clients when the app shuts down."""


class ProviderRegistry:
    """Ordered providers; the first that owns a model serves it, else the default one."""

    def __init__(self, default: str | None = None) -> None:
        self._providers: dict[str, Provider] = {}
        self.default = default

    def register(self, provider: Provider) -> None:
        self._providers[provider.name] = provider
        if self.default is None:
            self.default = provider.name

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def __iter__(self):
        return iter(self._providers.values())

    def for_model(self, model: str | None) -> Provider:
        if model:
            for provider in self._providers.values():
                if provider.owns(model):
                    return provider
        if self.default is None or self.default not in self._providers:
            from ..errors import UpstreamUnavailable

            raise UpstreamUnavailable("No provider is configured")
        return self._providers[self.default]

    def list_models(self) -> list[ModelCard]:
        cards: list[ModelCard] = []
        seen: set[str] = set()
        for provider in self._providers.values():
            for card in provider.list_models():
                if card.id not in seen:
                    seen.add(card.id)
                    cards.append(card)
        return cards

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()
