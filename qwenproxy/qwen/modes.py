"""Qwen web modes: thinking, web search, image generation (spec §3.5, §4.4–4.6).

A mode reaches us two ways: a model-name suffix (``qwen3-max-thinking``,
``qwen3-max-search``, ``qwen3-max-image``; thinking and search stack, in any order) or a
request field (``enable_thinking``, ``reasoning_effort``, ``web_search_options``). Routes
put the generic flags in ``ChatRequest.options`` (``thinking``, ``search``, ``image``,
``image_size``); this module turns them into Qwen's ``chat_type``, ``feature_config`` and
top-level ``size``. Flask-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUFFIXES: dict[str, str] = {"-thinking": "thinking", "-search": "search", "-image": "image"}


@dataclass(frozen=True)
class Modes:
    """Mode flags from a model name's suffixes."""

    thinking: bool = False
    search: bool = False
    image: bool = False

    def suffix(self) -> str:
        """The canonical suffix string, e.g. ``-thinking-search``."""
        if self.image:
            return "-image"
        return ("-thinking" if self.thinking else "") + ("-search" if self.search else "")

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.thinking:
            out["thinking"] = True
        if self.search:
            out["search"] = True
        if self.image:
            out["image"] = True
        return out


def split_model(model: str | None) -> tuple[str | None, Modes]:
    """``qwen3-max-thinking-search`` → (``qwen3-max``, thinking+search); no suffix → as is."""
    if not model:
        return model, Modes()
    name = model.strip()
    found: set[str] = set()
    while True:
        lowered = name.lower()
        for suffix, flag in SUFFIXES.items():
            if lowered.endswith(suffix) and len(name) > len(suffix) and flag not in found:
                found.add(flag)
                name = name[: -len(suffix)]
                break
        else:
            break
    if "image" in found:  # image generation excludes the text modes
        return name, Modes(image=True)
    return name, Modes(thinking="thinking" in found, search="search" in found)


def upstream_mode(options: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(chat_type, feature_config, extra body fields)`` for a request's options.

    Explicit ``chat_type``/``feature_config`` in the options win over the flags.
    """
    if options.get("image"):
        chat_type = "t2i"
    elif options.get("search"):
        chat_type = "search"
    else:
        chat_type = "t2t"
    chat_type = str(options.get("chat_type") or chat_type)
    features: dict[str, Any] = {}
    thinking = options.get("thinking")
    if thinking is not None and chat_type != "t2i":
        features["thinking_enabled"] = bool(thinking)
        if thinking and options.get("thinking_budget"):
            features["thinking_budget"] = int(options["thinking_budget"])
    features.update(options.get("feature_config") or {})
    extra: dict[str, Any] = {}
    if chat_type == "t2i" and options.get("image_size"):
        extra["size"] = options["image_size"]
    return chat_type, features, extra


def variants(model: Mapping[str, Any]) -> list[str]:
    """The suffixed ids an upstream ``/api/models`` entry supports (§3.3)."""
    meta = ((model.get("info") or {}).get("meta") or {}) if isinstance(model.get("info"), dict) else {}
    capabilities = meta.get("capabilities") or {}
    chat_types = meta.get("chat_type") or []
    base = str(model.get("id"))
    out = []
    if capabilities.get("thinking") or (meta.get("abilities") or {}).get("thinking"):
        out.append(base + "-thinking")
    if "search" in chat_types:
        out.append(base + "-search")
    if "t2i" in chat_types:
        out.append(base + "-image")
    return out
