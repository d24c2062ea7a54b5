"""Message content: a string, or a list of typed parts (OpenAI, the seed, Anthropic-like).

Every provider that sends text only reduces content the same way, here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

TEXT_PART_TYPES = ("text", "input_text")


def is_text_part(part: Any) -> bool:
    """A ``{"type": "text" | "input_text", "text": ...}`` part."""
    return isinstance(part, dict) and part.get("type") in TEXT_PART_TYPES


def part_text(part: dict[str, Any]) -> str:
    text = part.get("text", "")
    return "" if text is None else str(text)


def json_text(value: Any) -> str:
    """A non-text content value as JSON text (non-ASCII kept as is)."""
    return json.dumps(value, ensure_ascii=False)


def text_of(
    content: Any,
    *,
    joiner: str = "",
    bare_strings: bool = False,
    other: Callable[[Any], str] = str,
) -> str:
    """The text of a message's content: the text parts of a list joined by ``joiner`` (other
    parts skipped; bare string items kept when ``bare_strings``), ``""`` for none, and
    ``other(content)`` for anything else (``str`` or ``json.dumps``)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part_text(p) if is_text_part(p) else p
            for p in content
            if is_text_part(p) or (bare_strings and isinstance(p, str))
        ]
        return joiner.join(texts)
    return other(content)


def prefixed(content: Any, head: str) -> Any:
    """``content`` (a string or parts) with ``head`` in front of its text."""
    if not head:
        return content
    if isinstance(content, list):
        for i, item in enumerate(content):
            if isinstance(item, dict) and item.get("type") == "text":
                return [*content[:i], {**item, "text": head + str(item.get("text", ""))}, *content[i + 1 :]]
        return [{"type": "text", "text": head.rstrip()}, *content]
    return head + ("" if content is None else str(content))
