"""Qwen web modes: thinking, web search, images, video, deep research (spec §3.5, §4.4–4.6;
2026 spec §6).

A mode reaches us two ways: a model-name suffix (``qwen3-max-thinking``,
``qwen3-max-search``, ``qwen3-max-image``, ``qwen3-max-video``, ``qwen3-max-deep-research``;
thinking and search stack, in any order) or a request field (``enable_thinking``,
``reasoning_effort``, ``web_search_options``, ``chat_type``, ``modalities``). Routes put the
generic flags in ``ChatRequest.options`` (``thinking``, ``search``, ``image``, ``video``,
``research``, ``image_size``); this module turns them into Qwen's ``chat_type``,
``feature_config`` and top-level ``size``. Flask-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUFFIXES: dict[str, str] = {
    "-thinking": "thinking",
    "-search": "search",
    "-image": "image",
    "-video": "video",
    "-deep-research": "research",
}
# the media and research modes exclude the others; the first one found wins
EXCLUSIVE = ("video", "image", "research")
# 2026 §6: a t2v turn thinks in summaries (the front end's values, FreeQwenApi)
VIDEO_FEATURES: dict[str, Any] = {
    "thinking_enabled": True,
    "research_mode": "normal",
    "auto_thinking": True,
    "thinking_format": "summary",
}


@dataclass(frozen=True)
class Modes:
    """Mode flags from a model name's suffixes."""

    thinking: bool = False
    search: bool = False
    image: bool = False
    video: bool = False
    research: bool = False

    def suffix(self) -> str:
        """The canonical suffix string, e.g. ``-thinking-search``."""
        if self.video:
            return "-video"
        if self.image:
            return "-image"
        if self.research:
            return "-deep-research"
        return ("-thinking" if self.thinking else "") + ("-search" if self.search else "")

    def options(self) -> dict[str, Any]:
        names = ("thinking", "search", "image", "video", "research")
        return {name: True for name in names if getattr(self, name)}


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
    for flag in EXCLUSIVE:  # media and research exclude the text modes
        if flag in found:
            return name, Modes(**{flag: True})
    return name, Modes(thinking="thinking" in found, search="search" in found)


IMAGE_TYPES = ("t2i", "image_edit")
SIZED_TYPES = (*IMAGE_TYPES, "t2v")


def upstream_mode(options: Mapping[str, Any], *, has_image: bool = False) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(chat_type, feature_config, extra body fields)`` for a request's options.

    Explicit ``chat_type``/``feature_config`` in the options win over the flags. An image
    turn edits the message's image when it has one (``image_edit``), else draws (``t2i``):
    the site refuses ``image_edit`` without an image (2026 §6).
    """
    if options.get("video"):
        chat_type = "t2v"
    elif options.get("image"):
        chat_type = "t2i"
    elif options.get("research"):
        chat_type = "deep_research"
    elif options.get("search"):
        chat_type = "search"
    else:
        chat_type = "t2t"
    chat_type = str(options.get("chat_type") or chat_type)
    if chat_type in IMAGE_TYPES:
        chat_type = "image_edit" if has_image else "t2i"
    features: dict[str, Any] = dict(VIDEO_FEATURES) if chat_type == "t2v" else {}
    thinking = options.get("thinking")
    if thinking is not None and chat_type not in SIZED_TYPES:
        features["thinking_enabled"] = bool(thinking)
        if thinking and options.get("thinking_budget"):
            features["thinking_budget"] = int(options["thinking_budget"])
    features.update(options.get("feature_config") or {})
    extra: dict[str, Any] = {}
    if chat_type in SIZED_TYPES and options.get("image_size"):
        extra["size"] = options["image_size"]
    return chat_type, features, extra


def media_kind(options: Mapping[str, Any]) -> str | None:
    """``"video"`` when the options ask for a t2v task (answered by polling, not a stream)."""
    if options.get("video") or options.get("chat_type") == "t2v":
        return "video"
    return None


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
    if "t2v" in chat_types:
        out.append(base + "-video")
    if "deep_research" in chat_types:
        out.append(base + "-deep-research")
    return out
