"""Stateless clients: recognise a history whose earlier turns an upstream chat already holds.

Plain OpenAI clients re-send the whole conversation on every call and never send ``chatId``.
After each complete answer in an upstream chat, ``remember`` stores a fingerprint of the
conversation up to and including that answer (a ``ConversationPoint`` row: in the database,
so every worker and every gateway machine on one PostgreSQL agrees). ``plan`` looks a new
request up: the longest stored prefix of its messages that ends with an answer tells which
upstream chat, account and ``parent_id`` continue it, and how many leading messages that chat
already holds; the provider folds only the rest (``wire/transcript.py``). No match: a new
upstream chat, everything before the new turn folded into its first message.

A fingerprint is a sha256 chain over normalised messages: role, text (content parts joined,
whitespace runs collapsed, a leading ``<think>`` block dropped) and, for answers, the tool
calls (name + arguments as canonical JSON; ids left out, clients rewrite them). So the
assistant message an SDK sends back matches what was stored from the stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import db
from ..db import statements
from ..db.models import Chat, ConversationPoint
from ..wire.openai import Collected
from ..wire.transcript import content_text, strip_think

log = logging.getLogger(__name__)

CHAIN_SEED = b"qwenproxy/history/1"
ROLE_NAMES = {"developer": "system", "function": "tool"}


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return " ".join(arguments.split())
    return arguments


def normalise(message: dict[str, Any]) -> list[Any]:
    """What of a message takes part in its fingerprint."""
    role = str(message.get("role") or "")
    role = ROLE_NAMES.get(role, role)
    text = content_text(message.get("content"))
    if role == "assistant":
        text = strip_think(text)
    entry: list[Any] = [role, " ".join(text.split())]
    if role == "assistant":
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        if isinstance(message.get("function_call"), dict):
            calls.append({"function": message["function_call"]})
        entry.append(
            [
                [str((c.get("function") or {}).get("name", "")), _arguments((c.get("function") or {}).get("arguments"))]
                for c in calls
            ]
        )
    return entry


def fingerprints(messages: list[dict[str, Any]]) -> list[str]:
    """The fingerprint of every prefix: ``[i]`` covers ``messages[: i + 1]``."""
    digest = hashlib.sha256(CHAIN_SEED).digest()
    out = []
    for message in messages:
        line = json.dumps(normalise(message), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(digest + line.encode("utf-8")).digest()
        out.append(digest.hex())
    return out


@dataclass(frozen=True)
class Plan:
    """How a request without ``chatId`` reaches the upstream."""

    known: int = 0  # leading messages the upstream chat already holds (0: a new chat)
    upstream_chat_id: str | None = None
    parent_id: str | None = None
    account_id: str | None = None
    local_chat_id: str | None = None  # the local chat it continues; None: a new local chat

    @property
    def continues(self) -> bool:
        return self.upstream_chat_id is not None


def plan(messages: list[dict[str, Any]], *, matching: bool = True) -> Plan:
    """The longest stored point this history starts with, or a new chat (``matching`` off:
    always a new chat, the whole history folded)."""
    # a point ends with an answer, and something must follow it: the new turn
    answers = [i for i, m in enumerate(messages[:-1]) if m.get("role") == "assistant"]
    if not matching or not answers:
        return Plan()
    prints = fingerprints(messages[: answers[-1] + 1])
    candidates = {prints[i]: i + 1 for i in answers}
    with db.session():
        rows = (
            ConversationPoint.select()
            .where(ConversationPoint.fingerprint.in_(list(candidates)))
            .order_by(ConversationPoint.depth.desc(), ConversationPoint.id.desc())
        )
        point = next((r for r in rows if candidates.get(r.fingerprint) == r.depth), None)
        if point is None:
            return Plan()
        chat = Chat.get_or_none(Chat.id == point.chat_id) if point.chat_id else None
    # the local chat goes on only where its last answer is this point and nothing diverged
    # after it; an edited or regenerated turn starts a new local chat (upstream it branches)
    linear = not any(m.get("role") == "assistant" for m in messages[point.depth :])
    same = chat is not None and chat.last_response_id == point.response_id and linear
    log.info("history matches %d of %d messages (upstream chat %s)", point.depth, len(messages), point.upstream_chat_id)
    return Plan(
        known=point.depth,
        upstream_chat_id=point.upstream_chat_id,
        parent_id=point.response_id,
        account_id=point.account_id,
        local_chat_id=chat.id if same else None,
    )


def answer_message(text: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message a client will send back for an answer."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def remember(
    messages: list[dict[str, Any]],
    answer: dict[str, Any],
    *,
    upstream_chat_id: str,
    response_id: str,
    account_id: str | None,
    chat_id: str | None,
) -> ConversationPoint:
    """Store the point after ``answer``: the next request that re-sends this history plus a
    new turn continues ``upstream_chat_id`` from ``response_id``. Call inside a session."""
    conversation = [*messages, answer]
    return statements.create(
        ConversationPoint,
        fingerprint=fingerprints(conversation)[-1],
        depth=len(conversation),
        upstream_chat_id=upstream_chat_id,
        response_id=response_id,
        account_id=account_id,
        chat=chat_id,
    )


def recorder(
    messages: list[dict[str, Any]], chat_id: str, max_request_bytes: int | None = None
) -> Callable[[Collected, dict[str, Any]], None]:
    """A ``Turn.on_complete`` that remembers the point after the answer of this request.

    An answer longer than ``max_request_bytes`` characters is not remembered: no request
    within the body limit could send it back, and its fingerprint (a whole-text JSON dump)
    would hold the GIL for as long as a huge answer takes."""

    def record(collected: Collected, info: dict[str, Any]) -> None:
        if max_request_bytes and len(collected.text) > max_request_bytes:
            return
        started = collected.started
        upstream_chat_id = (started.chat_id if started else None) or info.get("upstream_chat_id")
        response_id = started.response_id if started else None
        if not upstream_chat_id or not response_id:
            return
        calls = [collected.tool_calls[i] for i in sorted(collected.tool_calls)]
        remember(
            messages,
            answer_message(collected.text, calls),
            upstream_chat_id=str(upstream_chat_id),
            response_id=str(response_id),
            account_id=info.get("account_id"),
            chat_id=chat_id,
        )

    return record
