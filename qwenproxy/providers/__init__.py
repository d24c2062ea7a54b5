"""Provider registration: one line per provider, in the order they claim model names."""

from __future__ import annotations

from flask import Flask

from .base import ChatRequest, MediaTask, ModelCard, Provider, ProviderRegistry

__all__ = ["ChatRequest", "MediaTask", "ModelCard", "Provider", "ProviderRegistry", "build_registry"]


def build_registry(app: Flask) -> ProviderRegistry:
    """Build every provider from the app's configuration.

    Each provider module exposes ``Provider.from_app(app)``; a provider whose settings are
    missing still registers and answers its requests with a clear 503 naming the variable.
    """
    from .gigachat import GigaChatProvider
    from .local_coder import LocalCoderProvider
    from .qwen_web import QwenWebProvider

    registry = ProviderRegistry(default="qwen")
    registry.register(QwenWebProvider.from_app(app))
    registry.register(GigaChatProvider.from_app(app))
    registry.register(LocalCoderProvider.from_app(app))
    return registry
