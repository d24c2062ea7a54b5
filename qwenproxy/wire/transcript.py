"""Earlier turns of an OpenAI conversation written out as text, for an upstream that takes one
message per call (Qwen web) and does not hold them yet.

Flask-free and upstream-free. A client that sends a whole history without the upstream's ids
gets it *folded*: the turns the upstream chat does not hold become a transcript in front of the
new turn, roles, tool calls and tool results clearly marked. ``turn_start`` says where the new
turn begins, the same way ``tools.fold_turn`` and the provider cut it, so nothing is sent
twice and nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..content import prefixed
from .tools import OPEN_TAG, render_call

SYSTEM_ROLES = ("system", "developer")
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)

HISTORY_OPEN = "<conversation_history>"
HISTORY_CLOSE = "</conversation_history>"
HISTORY_HEAD = (
    "This conversation started before this message. Its earlier turns, oldest first, are in the "
    f"{HISTORY_OPEN} block below; they already happened, so do not answer them again. "
    "Tool calls are shown as " + OPEN_TAG + " blocks and their results as <tool_response> blocks."
)
LATEST_HEAD = "The latest message, which is the one to reply to:"


def strip_think(text: str) -> str:
    """An answer without the ``<think>…</think>`` block ``REASONING_IN_CONTENT`` puts first."""
    return _THINK.sub("", text, count=1)


def part_text(part: Any) -> str:
    """A content part as text: its text, or a short marker for media (never a data: URI)."""
    if not isinstance(part, dict):
        return ""
    kind = part.get("type")
    if kind in ("text", "input_text"):
        return str(part.get("text", ""))
    ref = part.get(kind) if isinstance(kind, str) else None
    if kind == "image_url":
        ref = ref.get("url") if isinstance(ref, dict) else ref
    if isinstance(ref, dict):
        ref = ref.get("url") or ref.get("file_id") or ref.get("filename")
    if isinstance(ref, str) and ref.startswith("data:"):
        ref = "sha256:" + hashlib.sha256(ref.encode("utf-8")).hexdigest()[:16]
    label = "image" if kind in ("image", "image_url") else str(kind or "part")
    return f"[{label}: {ref}]" if ref else f"[{label}]"


def content_text(content: Any) -> str:
    """A message ``content`` (string, parts or null) as one text; parts one per line."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for t in (part_text(p) for p in content) if t)
    return json.dumps(content, ensure_ascii=False)


def first_system_index(messages: list[dict[str, Any]]) -> int | None:
    """Where the system message sent as Qwen's ``system_message`` is (the first one)."""
    return next((i for i, m in enumerate(messages) if m.get("role") in SYSTEM_ROLES), None)


def turn_start(messages: list[dict[str, Any]], *, tools_engaged: bool) -> int:
    """Index of the first message of the new turn, as the provider cuts it.

    Without tools the turn is the last user message (``last_user_turn``); with tools it is
    everything after the last assistant message (``tools.fold_turn(continuing=True)``).
    """
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=0)
    if not tools_engaged:
        return last_user
    convo = [i for i, m in enumerate(messages) if m.get("role") not in SYSTEM_ROLES]
    last_assistant = max((k for k, i in enumerate(convo) if messages[i].get("role") == "assistant"), default=-1)
    if 0 <= last_assistant < len(convo) - 1:
        return convo[last_assistant + 1]
    return last_user


def _block(message: dict[str, Any], names: dict[str, str]) -> str:
    role = str(message.get("role") or "user")
    text = content_text(message.get("content"))
    if role == "assistant":
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        if isinstance(message.get("function_call"), dict):  # legacy single call
            calls.append({"function": message["function_call"]})
        for call in calls:
            names[str(call.get("id", ""))] = str((call.get("function") or {}).get("name", ""))
        parts = [strip_think(text).strip()] if strip_think(text).strip() else []
        parts += [render_call(c) for c in calls]
        return "### assistant\n" + "\n".join(parts)
    if role in ("tool", "function"):
        call_id = str(message.get("tool_call_id") or "")
        name = message.get("name") or names.get(call_id) or "a tool"
        head = f"### tool result of {name}" + (f" (call {call_id})" if call_id else "")
        return f"{head}\n<tool_response>\n{text}\n</tool_response>"
    return f"### {role}\n{text}"


def transcript(messages: list[dict[str, Any]], *, skip_system: int | None = None, known: list | None = None) -> str:
    """``messages`` as a transcript block (empty string for none).

    ``skip_system``: the index of the system message that goes separately (left out);
    ``known``: earlier messages, read only to learn the names of earlier tool calls.
    """
    names: dict[str, str] = {}
    for message in known or []:
        _block(message, names)
    blocks = [_block(m, names) for i, m in enumerate(messages) if i != skip_system]
    if not blocks:
        return ""
    return f"{HISTORY_OPEN}\n" + "\n\n".join(blocks) + f"\n{HISTORY_CLOSE}"


def folded(messages: list[dict[str, Any]], start: int, end: int) -> str:
    """The transcript of ``messages[start:end]`` (the first system message left out)."""
    end = max(start, end)
    system = first_system_index(messages)
    skip = system - start if system is not None and start <= system < end else None
    return transcript(messages[start:end], skip_system=skip, known=messages[:start])


def with_history(history: str, content: Any) -> Any:
    """The new turn's content with the transcript of the earlier turns in front."""
    if not history:
        return content
    return prefixed(content, f"{HISTORY_HEAD}\n\n{history}\n\n{LATEST_HEAD}\n\n")
