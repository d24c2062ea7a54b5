"""Long contexts under chat.qwen.ai's body size wall (2026 spec §2).

A completions body above about 128 KB gets a captcha instead of an answer. ``ContextFitter``
keeps every body at or under ``QWEN_MAX_BODY_BYTES``: when a turn would be larger, its long
parts (the folded history, a long system prompt, a long tool prompt, a turn over
``INLINE_TURN_BYTES``) become
parsed text documents, uploaded through the usual path (STS → OSS → files/parse →
parse/status) and attached to ``messages[0].files`` as the front end attaches documents
(``file_class: "document"``, ``context: "full"``, ``progress: 100``, a successful
``parse_meta``); a short note takes their place inline. A document is remembered by the hash
of its content, per account, so the next turn of the same conversation attaches it again
without a new upload. When even that cannot fit: ``ContextTooLong`` (a 400 that says the
limit), never a captcha. Flask-free.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any

from .. import db
from ..accounts.pool import Account
from ..content import prefixed
from ..db.models import UploadedFile
from ..errors import ContextTooLong
from ..qwen.transport import json_bytes
from ..wire.tools import with_tool_prompt
from ..wire.transcript import with_history
from .attachments import files_item, item_for_record
from .uploader import Uploader

log = logging.getLogger(__name__)

CONTEXT_PURPOSE = "context"  # UploadedFile.purpose of these documents (kept out of /v1/files)
INLINE_TURN_BYTES = 48 * 1024  # the new turn stays inline up to this (Rfym21 keeps ≤ 48 KiB)
SMALL_SYSTEM_BYTES = 2048  # a system prompt this short stays the system message
# a document id is taken again only this long after its upload: an expired file is not an
# error upstream, the model just answers without it (Rfym21, 2026-09)
REUSE_SECONDS = 1800.0
CHAT_ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"  # as long as a real chat id
MARGIN_BYTES = 256  # what a real chat id or timestamp may add to the measured body

HISTORY_NOTE = (
    'The earlier turns of this conversation, oldest first, are in the attached document "{name}". '
    "They already happened, so do not answer them again. The latest message, which is the one to reply to:\n\n"
)
SYSTEM_NOTE = 'Your instructions are in the attached document "{name}". Follow them as your system instructions.'
TOOLS_NOTE = (
    'The functions you can call, and how to call them, are in the attached document "{name}". '
    "Follow it as your instructions for calling functions."
)
TURN_NOTE = (
    'My message is too long to write here, so it is the attached document "{name}". '
    "Read all of it and reply to it as if I had written it here."
)


def json_size(body: Any) -> int:
    """Bytes of ``body`` as sent: compact UTF-8 JSON, as the front end's ``JSON.stringify``."""
    return len(json_bytes(body))


def _text_of(turn: Any) -> str:
    if isinstance(turn, list):
        return "".join(str(i.get("text", "")) for i in turn if isinstance(i, dict) and i.get("type") == "text")
    return "" if turn is None else str(turn)


def _replace_text(turn: Any, text: str) -> Any:
    """The turn with its text replaced, its media parts kept."""
    if isinstance(turn, list):
        media = [i for i in turn if not (isinstance(i, dict) and i.get("type") == "text")]
        return [{"type": "text", "text": text}, *media] if media else text
    return text


@dataclass
class Context:
    """One upstream turn in parts, so that the long ones can move into documents."""

    system: str | None
    history: str  # the folded earlier turns ("" when the upstream chat holds them)
    turn: Any  # the new turn as Qwen content: a string or text/media items
    documents: list[dict[str, Any]] = field(default_factory=list)  # files[] items of moved parts
    history_note: str = ""  # said inline instead of the history once it moved
    tools: str = ""  # the tool prompt, in front of the turn (the same on every turn of a loop)

    def content(self) -> Any:
        """What goes in ``messages[0].content``."""
        turn = with_tool_prompt(self.turn, self.tools)
        if self.history_note:
            return prefixed(turn, self.history_note)
        return with_history(self.history, turn)


@dataclass(frozen=True)
class _Move:
    kind: str  # conversation | instructions | tools | message
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.sha256[:12]}.txt"


Measure = Callable[[Context], dict[str, Any]]


class ContextFitter:
    """Keeps completions bodies under the size wall by moving long parts into documents."""

    def __init__(self, uploader: Uploader | None, max_body: int, *, now: Callable[[], float] = time.time) -> None:
        self.uploader = uploader
        self.max_body = int(max_body)
        self.inline_turn = min(INLINE_TURN_BYTES, self.max_body // 2)
        self.now = now

    def fit(self, context: Context, measure: Measure, account: Account) -> Context:
        """``context`` as it can be sent: unchanged when its body fits, else with documents.

        ``measure(context)`` builds the body (``CHAT_ID_PLACEHOLDER`` for a chat not created
        yet). Moves, in order, while the body is too large: the history, a long system prompt,
        the tool prompt (one document, attached again on every turn of an agent loop); then
        the turn when it is over the inline limit (or when nothing else is left). The
        documents are uploaded as ``account`` only once the plan is known to fit.
        """
        limit = self.max_body - MARGIN_BYTES
        if json_size(measure(context)) <= limit:
            return context
        planned, moves = context, []
        for step in (self._move_history, self._move_system, self._move_tools):
            planned, moves = step(planned, moves)
            if json_size(measure(planned)) <= limit:
                break
        if len(_text_of(planned.turn).encode("utf-8")) > self.inline_turn or json_size(measure(planned)) > limit:
            planned, moves = self._move_turn(planned, moves)
        size = json_size(measure(planned))
        if size > limit:
            raise ContextTooLong(
                "The conversation is too long for chat.qwen.ai: with its long parts moved into attached "
                f"documents the request is still {size} bytes, over the limit of {self.max_body} bytes "
                "(QWEN_MAX_BODY_BYTES)",
                param="messages",
            )
        self._check_uploads(moves)
        documents = [self._document(move, account) for move in moves]
        fitted = replace(planned, documents=[*context.documents, *documents])
        final = json_size(measure(fitted))
        if final > self.max_body:
            raise ContextTooLong(
                f"The conversation is too long for chat.qwen.ai: the request is {final} bytes, over the "
                f"limit of {self.max_body} bytes (QWEN_MAX_BODY_BYTES)",
                param="messages",
            )
        log.info("long context moved into %d document(s); the body is now %d bytes", len(moves), final)
        return fitted

    # --- the moves; each adds a stand-in descriptor as long as a real one, for measuring
    def _move_history(self, context: Context, moves: list[_Move]) -> tuple[Context, list[_Move]]:
        if not context.history:
            return context, moves
        move = _Move("conversation", context.history)
        note = HISTORY_NOTE.format(name=move.name)
        return self._planned(context, move, history="", history_note=note), [*moves, move]

    def _move_system(self, context: Context, moves: list[_Move]) -> tuple[Context, list[_Move]]:
        system = context.system or ""
        if len(system.encode("utf-8")) <= SMALL_SYSTEM_BYTES:
            return context, moves
        move = _Move("instructions", system)
        return self._planned(context, move, system=SYSTEM_NOTE.format(name=move.name)), [*moves, move]

    def _move_tools(self, context: Context, moves: list[_Move]) -> tuple[Context, list[_Move]]:
        if len(context.tools.encode("utf-8")) <= SMALL_SYSTEM_BYTES:
            return context, moves
        move = _Move("tools", context.tools)
        return self._planned(context, move, tools=TOOLS_NOTE.format(name=move.name)), [*moves, move]

    def _move_turn(self, context: Context, moves: list[_Move]) -> tuple[Context, list[_Move]]:
        text = _text_of(context.turn)
        if not text:
            return context, moves
        move = _Move("message", text)
        turn = _replace_text(context.turn, TURN_NOTE.format(name=move.name))
        return self._planned(context, move, turn=turn), [*moves, move]

    @staticmethod
    def _planned(context: Context, move: _Move, **changes: Any) -> Context:
        stand_in = document_item_shape(move.name, len(move.text.encode("utf-8")))
        return replace(context, documents=[*context.documents, stand_in], **changes)

    # --- uploads
    def _check_uploads(self, moves: list[_Move]) -> None:
        if self.uploader is None:
            raise ContextTooLong(
                f"The conversation is too long for chat.qwen.ai (over {self.max_body} bytes, QWEN_MAX_BODY_BYTES) "
                "and uploads are not available to move it into a document",
                param="messages",
            )
        for move in moves:
            size = len(move.text.encode("utf-8"))
            if size > self.uploader.limit:
                raise ContextTooLong(
                    f"The conversation is too long for chat.qwen.ai: its {move.kind} part is {size} bytes, "
                    f"over the upload limit of {self.uploader.limit} bytes for one document (MAX_UPLOAD_MB)",
                    param="messages",
                )

    def _document(self, move: _Move, account: Account) -> dict[str, Any]:
        """The ``files[]`` item of a moved part: a recent upload of the same text by this
        account, else a new upload (parsed before it is used)."""
        assert self.uploader is not None
        digest = move.sha256
        with db.session():
            record = (
                UploadedFile.select()
                .where(
                    (UploadedFile.content_sha256 == digest)
                    & (UploadedFile.account_id == account.id)
                    & (UploadedFile.status == "processed")
                    & (UploadedFile.created_at >= self.now() - REUSE_SECONDS)
                )
                .order_by(UploadedFile.created_at.desc())
                .first()
            )
        if record is None:
            data = move.text.replace("\x00", "").encode("utf-8")
            record = self.uploader.upload(
                BytesIO(data), name=move.name, size=len(data), purpose=CONTEXT_PURPOSE, account=account
            )
            with db.session():
                UploadedFile.update(content_sha256=digest).where(UploadedFile.id == record.id).execute()
        else:
            log.info("reusing document %s (%s) for account %s", record.qwen_file_id, move.name, account.id)
        return document_item(item_for_record(record))


def document_item(item: dict[str, Any]) -> dict[str, Any]:
    """A parsed text document as the front end attaches it (2026 spec §2)."""
    item = {**item, "progress": 100, "context": "full", "status": "uploaded"}
    item["file"] = {**item["file"], "meta": {**item["file"]["meta"], "parse_meta": {"parse_status": "success"}}}
    return item


def document_item_shape(name: str, size: int) -> dict[str, Any]:
    """A stand-in with the length of a real descriptor, for planning before the upload."""
    uuid_like = CHAT_ID_PLACEHOLDER
    item = files_item(
        file_id=uuid_like,
        url="https://" + "x" * 1024,  # presigned OSS URLs run long; better to overestimate
        name=name,
        size=size,
        mime="text/plain",
        user_id=uuid_like,
    )
    return document_item(item)
