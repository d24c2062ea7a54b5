"""chat.qwen.ai web API ("v2"): request bodies, the SSE stream, and the HTTP-200 error envelopes.

Free of Flask and of any transport: it builds JSON bodies, turns raw bytes into internal
events incrementally, and turns upstream failures into the typed errors of
``qwenproxy.errors``. Section numbers refer to ``shared/specs/qwen-web.md``.
"""

from __future__ import annotations

import codecs
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import (
    ApiError,
    BadRequest,
    Conflict,
    ModelNotFound,
    NotFound,
    RateLimited,
    Unauthorized,
    UpstreamError,
)
from ..events import Annotation, Event, Finished, ImageResult, ReasoningDelta, ResponseStarted, TextDelta, Usage
from . import walls

# 2026 in-chat image tools: a function_call, then a role:"function" delta with extra.image_list
IMAGE_TOOL_PHASES = ("image_gen_tool", "image_edit_tool")
# phases whose ``finished`` delta may be the last event of a stream (t2i has no answer phase)
TERMINAL_PHASES = ("image_gen", "image_edit", "t2v", *IMAGE_TOOL_PHASES)
_NEWLINE = re.compile(r"\r\n|\r|\n")


# --------------------------------------------------------------------------- request bodies


PROTOCOL_VERSION = "2.1"  # top-level ``version`` of the 2026 completions body (2026 §2)


def new_chat_body(
    model: str,
    *,
    chat_type: str = "t2t",
    chat_mode: str = "normal",
    now: float | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v2/chats/new`` as the 2026 front end sends it (2026 §2): no
    ``title``, an empty ``chatId`` and ``project_id``, the timestamp in milliseconds."""
    now = time.time() if now is None else now
    return {
        "chatId": "",
        "models": [model],
        "project_id": "",
        "timestamp": int(now * 1000),
        "chat_type": chat_type,
        "chat_mode": chat_mode,
    }


def thinking_mode(thinking: bool) -> str:
    """The front end's ``thinking_mode`` for a ``thinking_enabled`` value (2026 §2)."""
    return "Thinking" if thinking else "Fast"


def completion_body(
    *,
    chat_id: str,
    model: str,
    content: str | list[dict[str, Any]],
    parent_id: str | None = None,
    system: str | None = None,
    files: list[dict[str, Any]] | None = None,
    chat_type: str = "t2t",
    feature_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
    chat_mode: str = "normal",
) -> dict[str, Any]:
    """Body of ``POST /api/v2/chat/completions?chat_id=`` as the 2026 front end sends it
    (2026 §2, §3.5): ``version`` "2.1", exactly one message, both id spellings.

    ``chat_mode``: ``"guest"`` for a chat without an account (2026 §5).

    ``parent_id`` is the previous assistant ``response_id``; it goes at the top level and
    into the message, each as ``parentId`` and ``parent_id`` (§4.8). The top-level
    timestamp is in milliseconds, the message's in seconds (Open WebUI's unit).
    """
    now = time.time() if now is None else now
    features: dict[str, Any] = {"thinking_enabled": False}
    features.update(feature_config or {})
    thinking = bool(features["thinking_enabled"])
    features.setdefault("thinking_mode", thinking_mode(thinking))
    features.setdefault("thinking_format", "summary")
    features.setdefault("research_mode", "normal")
    features.setdefault("auto_thinking", False)
    features.setdefault("auto_search", False)
    features["output_schema"] = "phase"  # mandatory: without it deltas carry no phase (2026 §2)
    message = {
        "id": None,
        "fid": str(uuid.uuid4()),
        "parentId": parent_id,
        "parent_id": parent_id,
        "childrenIds": [str(uuid.uuid4())],
        "role": "user",
        "content": content,
        "user_action": "chat",
        "files": list(files or []),
        "timestamp": int(now),
        "models": [model],
        "model": model,
        "chat_type": chat_type,
        "sub_chat_type": chat_type,
        "feature_config": features,
        "extra": {"meta": {"subChatType": chat_type}},
    }
    body: dict[str, Any] = {
        "version": PROTOCOL_VERSION,
        "stream": True,
        "incremental_output": True,
        "chat_id": chat_id,
        "chatId": chat_id,
        "chat_mode": chat_mode,
        "model": model,
        "parent_id": parent_id,
        "parentId": parent_id,
        "messages": [message],
        "timestamp": int(now * 1000),
    }
    if system:
        body["system_message"] = system
    if extra:
        body.update(extra)
    return body


# --------------------------------------------------------------------------- error envelopes


def _error_from_code(code: str, details: str, data: Mapping[str, Any]) -> ApiError:
    """Map an envelope's ``data.code`` (§3.0 table, 2026 §4) to a typed error."""
    text = details or code or "upstream error"
    lowered = code.lower()
    if lowered in ("ratelimited", "parallellimited", "quotalimited"):
        hours = data.get("num")
        retry = None
        try:
            retry = float(hours) * 3600 if hours is not None else None
        except (TypeError, ValueError):
            retry = None
        err = RateLimited(f"Qwen quota reached: {text}", retry_after=retry)
        err.hours = float(hours) if retry is not None else None  # type: ignore[attr-defined]
        return err
    if lowered == "unauthorized":
        return Unauthorized(f"Qwen rejected the account token: {text}")
    if lowered == "not_found":
        if "model" in text.lower():
            return ModelNotFound(f"Qwen: {text}", param="model")
        return NotFound(f"Qwen: {text}", code="upstream_not_found")
    if lowered == "invalid_input":  # 2026 §1: e.g. thinking switched off for a model that cannot
        return BadRequest(f"Qwen refused the request as invalid input: {text}", code="upstream_invalid_input")
    if lowered == "bad_request":
        if "in progress" in text.lower():
            return Conflict("Qwen is still answering the previous message in this chat", code="chat_in_progress")
        return UpstreamError(f"Qwen rejected the request: {text}", code="upstream_bad_request")
    signature = walls.signature_in(f"{code} {details}")
    if signature is not None:
        return walls.blocked(f"{signature} in an error envelope")
    return UpstreamError(f"Qwen error {code}: {text}")


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> ApiError | None:
    """The typed error a non-stream answer stands for, or ``None`` if it is a success.

    Upstream mostly answers HTTP 200 with a JSON envelope (§3.0); also handles the slider
    captcha JSON, the WAF HTML page, ``x-actual-status-code`` wrapping and real 4xx/5xx.
    Every wall (2026 §4) is an ``UpstreamBlocked`` with the code ``upstream_blocked``.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    wall = walls.header_wall(lower)
    if wall is not None:
        return wall
    actual = lower.get("x-actual-status-code")
    if actual and actual.strip() not in ("200", ""):
        return UpstreamError(f"Qwen gateway answered {actual.strip()} inside HTTP 200", code="upstream_status")
    text = body.decode("utf-8", "replace")
    if "html" in lower.get("content-type", "") or text.lstrip().lower().startswith(("<!doctype", "<html")):
        signature = walls.signature_in(text)
        if signature is not None:
            return walls.blocked(f"{signature} page")
        return UpstreamError(f"Qwen answered HTTP {status} with an HTML page", code="upstream_html")
    payload: Any = None
    try:
        payload = json.loads(text) if text.strip() else None
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        err = _json_error(status, payload)
        if err is not None:
            return err
    elif payload is None and text.strip() and status == 200:
        signature = walls.signature_in(text)  # a captcha page served as text/plain
        if signature is not None:
            return walls.blocked(f"{signature} page")
    if status in (401, 403):
        return Unauthorized(f"Qwen answered HTTP {status}")
    if status == 429:
        return RateLimited("Qwen answered HTTP 429")
    if status >= 400:
        return UpstreamError(f"Qwen answered HTTP {status}")
    return None


def _json_error(status: int, payload: Mapping[str, Any]) -> ApiError | None:
    """The error a JSON answer stands for: the slider captcha, an envelope, a FastAPI detail."""
    ret = payload.get("ret")
    if isinstance(ret, list) and ret and payload.get("success") is not True:
        signature = walls.signature_in(" ".join(str(r) for r in ret))
        if signature is not None:
            return walls.blocked(f"{signature} slider captcha")
    data = payload.get("data")
    if payload.get("success") is False or (isinstance(data, dict) and "code" in data and "details" in data):
        data = data if isinstance(data, dict) else {}
        return _error_from_code(str(data.get("code", "")), str(data.get("details", "")), data)
    if "detail" in payload and status >= 400:  # legacy Open WebUI style
        detail = str(payload["detail"])
        if status in (401, 403):  # an account problem: the caller tries another account
            return Unauthorized(f"Qwen answered HTTP {status}: {detail}")
        if status == 429:
            return RateLimited(f"Qwen answered HTTP 429: {detail}")
        if "model" in detail.lower():
            return ModelNotFound(f"Qwen: {detail}", param="model")
        return UpstreamError(f"Qwen: {detail}")
    return None


def unwrap(payload: Any) -> Any:
    """``data`` of a success envelope (§3.0); flat answers are returned as they are."""
    if isinstance(payload, dict) and payload.get("success") is True and "data" in payload:
        return payload["data"]
    return payload


# --------------------------------------------------------------------------- SSE framing


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder: bytes in, ``data`` payloads out.

    Chunks may split lines, CRLF pairs and UTF-8 characters anywhere. Comment lines
    (``: keepalive``) are skipped; several ``data:`` lines of one event are joined by ``\\n``.
    Lines that are no SSE field at all (a captcha page or a bare JSON object written into
    the stream, 2026 §4) are kept in ``stray`` for the caller to inspect.
    """

    FIELDS = ("data", "event", "id", "retry")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # text after the last line end (kept as pieces: linear)
        self._data: list[str] = []
        self.stray: list[str] = []

    def take_stray(self) -> list[str]:
        """The non-SSE lines seen since the last call."""
        out, self.stray = self.stray, []
        return out

    def feed(self, chunk: bytes) -> list[str]:
        text = self._decoder.decode(chunk)
        ends_cr = bool(self._pending) and self._pending[-1].endswith("\r")
        self._pending.append(text)
        if "\n" not in text and "\r" not in text and not ends_cr:
            return []  # still inside a line: a long event in many reads is not rescanned each time
        return self._drain(final=False)

    def close(self) -> list[str]:
        self._pending.append(self._decoder.decode(b"", final=True))
        out = self._drain(final=True)
        if self._data:
            out.append("\n".join(self._data))
            self._data = []
        return out

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        pos = 0
        buf = "".join(self._pending)
        while True:
            match = _NEWLINE.search(buf, pos)
            if match is None:
                break
            if match.group() == "\r" and match.end() == len(buf) and not final:
                break  # a lone CR at the end may be the first half of CRLF
            self._line(buf[pos : match.start()], out)
            pos = match.end()
        rest = buf[pos:]
        if final and rest:
            self._line(rest, out)
            rest = ""
        self._pending = [rest] if rest else []
        return out

    def _line(self, line: str, out: list[str]) -> None:
        if line == "":
            if self._data:
                out.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field not in self.FIELDS:
            self.stray.append(line)


# --------------------------------------------------------------------------- stream events


def usage_from_qwen(raw: Mapping[str, Any] | None) -> Usage:
    """Qwen's cumulative usage object (§4.7) in OpenAI's names, keeping the raw object."""
    raw = dict(raw or {})
    prompt = int(raw.get("input_tokens") or raw.get("prompt_tokens") or 0)
    completion = int(raw.get("output_tokens") or raw.get("completion_tokens") or 0)
    total = int(raw.get("total_tokens") or prompt + completion)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, raw=raw)


class StreamInterpreter:
    """Turns the decoded JSON events of one completion stream (§4.2) into internal events.

    Follows the primary answer (``response_index`` "0") and never mixes in a parallel one
    (2026 §3): the other branch is read aside and becomes the answer only when branch 0
    finishes without any content while it carried some. Keeps only the last cumulative
    usage, turns ``think``/``thinking_summary`` into reasoning (diffing the cumulative
    arrays), search results into ``Annotation``s and ``image_gen`` into ``ImageResult``s,
    and raises typed errors for in-stream failures, ``upstream_blocked`` for walls (2026 §4).
    """

    def __init__(self) -> None:
        self.started: ResponseStarted | None = None
        self._usage_raw: Mapping[str, Any] | None = None  # the last one: every chunk repeats it
        self.finished = False
        self.may_end = False  # the last delta was a finished phase that can end a stream
        self.has_content = False  # answer text or an image was produced
        self._summary_seen: dict[str, list[str]] = {}
        self._reasoned = False
        self._source_urls: set[str] = set()
        self._images: list[str] = []
        # parallel answers (2026 §3): response_id -> its own interpreter and what it produced
        self._others: dict[str, StreamInterpreter] = {}
        self._held: dict[str, list[Event]] = {}
        self._following: str | None = None  # the other branch, once it became the answer

    def feed_data(self, data: str) -> list[Event]:
        data = data.strip()
        if not data:
            return []
        if data == "[DONE]":
            return self._finish("stop") if not self.finished else []
        try:
            obj = json.loads(data)
        except ValueError:
            return self.feed_stray(data)  # not every line is JSON (§4.1), but a captcha page is a wall
        if not isinstance(obj, dict):
            return []
        return self.feed(obj)

    def feed_stray(self, line: str) -> list[Event]:
        """A line that is no JSON event: a wall when it carries a wall signature (2026 §4)."""
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return self.feed(obj)
        signature = walls.signature_in(line)
        if signature is not None:
            raise walls.blocked(f"{signature} page inside the event stream")
        return []

    def feed(self, obj: Mapping[str, Any]) -> list[Event]:
        if self.finished:
            return []
        if "response.created" in obj:
            return self._created(obj["response.created"] or {})
        if "response.stopped" in obj:
            return self._finish("stop")
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            self._check_frame(obj)
            return []
        rid = obj.get("response_id")
        primary = self.started.response_id if self.started else None
        if self._following is not None:
            return self._follow(rid, obj) if rid == self._following else []
        if rid and primary and rid != primary:
            self._other(str(rid), obj)  # a parallel answer (2026 §3): read aside, never mixed in
            return []
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage_raw = usage  # converted once, at the end
        delta = choices[0].get("delta") or {}
        out = self._delta(delta)
        self.has_content = self.has_content or any(isinstance(e, TextDelta | ImageResult) for e in out)
        if self.finished and not self.has_content:
            return self._maybe_switch(out)
        return out

    @property
    def usage(self) -> Usage | None:
        """The last cumulative usage seen (§4.7), in OpenAI's names."""
        return usage_from_qwen(self._usage_raw) if self._usage_raw is not None else None

    def _created(self, created: Mapping[str, Any]) -> list[Event]:
        started = ResponseStarted(
            chat_id=created.get("chat_id"),
            parent_id=created.get("parent_id"),
            response_id=created.get("response_id"),
        )
        if self.started is None and str(created.get("response_index", "0")) == "0":
            self.started = started
            return [started]
        if started.response_id and started.response_id != (self.started and self.started.response_id):
            self._branch(str(started.response_id), started)
        return []

    def _check_frame(self, obj: Mapping[str, Any]) -> None:
        """A frame without ``choices``: an error, an envelope or a wall (2026 §4), else nothing."""
        if "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {"details": str(obj["error"])}
            raise _error_from_code(str(err.get("code", "")), str(err.get("details", "")), err)
        signature = walls.frame_signature(obj)
        if signature is not None:
            raise walls.blocked(f"{signature} frame inside the event stream")
        if obj.get("success") is False:
            data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
            if data.get("code"):
                raise _error_from_code(str(data["code"]), str(data.get("details", "")), data)
            raise walls.blocked("a success:false frame inside the event stream")

    def _branch(self, rid: str, started: ResponseStarted | None = None) -> StreamInterpreter:
        other = self._others.get(rid)
        if other is None:
            other = StreamInterpreter()
            chat_id = self.started.chat_id if self.started else None
            parent_id = self.started.parent_id if self.started else None
            other.started = started or ResponseStarted(chat_id, parent_id, rid)
            self._others[rid] = other
            self._held[rid] = []
        return other

    def _other(self, rid: str, obj: Mapping[str, Any]) -> None:
        other = self._branch(rid)
        if other.finished:
            return
        try:
            self._held[rid].extend(other.feed(obj))
        except ApiError:  # a failing backup branch is simply not a candidate any more
            other.finished, other.has_content = True, False

    def _maybe_switch(self, out: list[Event]) -> list[Event]:
        """Branch 0 finished empty: the other branch is the answer if it carried content."""
        rid = next((r for r, other in self._others.items() if other.has_content), None)
        if rid is None:
            return out
        other = self._others[rid]
        self.finished = False
        self._following = rid
        held = self._held.pop(rid)
        if self._reasoned:  # never two lines of reasoning
            held = [e for e in held if not isinstance(e, ReasoningDelta)]
        kept = [e for e in out if not isinstance(e, Finished | Usage)]
        assert other.started is not None
        switched = [*kept, other.started, *held]
        if other.finished:
            self.finished = True
        return switched

    def _follow(self, rid: str, obj: Mapping[str, Any]) -> list[Event]:
        other = self._others[rid]
        out = other.feed(obj)
        if self._reasoned:
            out = [e for e in out if not isinstance(e, ReasoningDelta)]
        if other.finished:
            self.finished = True
        return out

    def _delta(self, delta: Mapping[str, Any]) -> list[Event]:
        phase = delta.get("phase")
        status = delta.get("status")
        content = delta.get("content")
        content = content if isinstance(content, str) else ""
        role = delta.get("role", "assistant")
        extra = delta.get("extra") if isinstance(delta.get("extra"), dict) else {}
        if status == "error":
            err = extra.get("error")
            err = err if isinstance(err, dict) else {"details": str(err or "stream error")}
            raise _error_from_code(str(err.get("code", "")), str(err.get("details", "")), err)
        # a tool's own output (search results, generated images) is never answer text
        tool_output = role == "function" or bool(delta.get("function_call")) or bool(delta.get("name"))
        out: list[Event] = self._sources(extra)
        if phase in (None, "answer"):
            if content and not tool_output:
                out.append(TextDelta(content))
            if status == "finished" and role != "function":
                out.extend(self._finish("stop"))
        elif phase == "think":
            if content:
                out.extend(self._reason(content))
        elif phase == "thinking_summary":
            out.extend(self._summary(extra))
        elif phase == "image_gen":
            if content and not tool_output:
                out.extend(self._image(content.strip()))
        elif phase in IMAGE_TOOL_PHASES:
            for item in extra.get("image_list") or []:
                url = item.get("image") or item.get("url") if isinstance(item, dict) else item
                if isinstance(url, str) and url:
                    out.extend(self._image(url))
        self.may_end = status == "finished" and phase in TERMINAL_PHASES
        return out

    def _reason(self, text: str) -> list[Event]:
        self._reasoned = True
        return [ReasoningDelta(text)]

    def _summary(self, extra: Mapping[str, Any]) -> list[Event]:
        """2026 ``thinking_summary`` (§4.4): ``summary_title.content`` and
        ``summary_thought.content`` are cumulative arrays; emit only what is new (new
        items as paragraphs, the grown tail of an item already sent as it is)."""
        out: list[Event] = []
        for key in ("summary_title", "summary_thought"):
            holder = extra.get(key)
            items = holder.get("content") if isinstance(holder, dict) else None
            if isinstance(items, str):
                items = [items]
            if not isinstance(items, list):
                continue
            seen = self._summary_seen.setdefault(key, [])
            for i, item in enumerate(items):
                text = item if isinstance(item, str) else ("" if item is None else str(item))
                if i < len(seen):
                    if text != seen[i] and text.startswith(seen[i]):
                        out.extend(self._reason(text[len(seen[i]) :]))
                        seen[i] = text
                    continue
                seen.append(text)
                if text:
                    out.extend(self._reason(("\n\n" if self._reasoned else "") + text))
        return out

    def _sources(self, extra: Mapping[str, Any]) -> list[Event]:
        """Search results (§4.5): ``extra.tool_result.docs[]`` or the older
        ``extra.web_search_info[]``, as ``Annotation`` events, each URL once."""
        docs: list[Any] = []
        result = extra.get("tool_result")
        if isinstance(result, dict):
            found = result.get("docs") or result.get("results") or []
            docs.extend(found if isinstance(found, list) else [])
        elif isinstance(result, list):
            docs.extend(result)
        info = extra.get("web_search_info")
        if isinstance(info, list):
            docs.extend(info)
        out: list[Event] = []
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            url = doc.get("url") or doc.get("link")
            if not isinstance(url, str) or not url or url in self._source_urls:
                continue
            self._source_urls.add(url)
            out.append(Annotation(url=url, title=str(doc.get("title") or doc.get("name") or "")))
        return out

    def _image(self, url: str) -> list[Event]:
        """A generated image (§4.6): the URL, plus markdown text so plain clients see it."""
        if url in self._images:
            return []
        self._images.append(url)
        prefix = "\n\n" if len(self._images) > 1 else ""
        return [ImageResult(url), TextDelta(f"{prefix}![image]({url})")]

    def close(self) -> list[Event]:
        """End of the byte stream: finish if the last delta may end an answer (a finished
        ``image_gen``), else the stream was cut."""
        if self.finished:
            return []
        if self._following is not None:
            other = self._others[self._following]
            self.finished = True
            return other.close()
        if self.may_end:
            return self._finish("stop")
        raise UpstreamError("Qwen's stream ended before the answer was finished", code="upstream_truncated")

    def _finish(self, reason: str) -> list[Event]:
        self.finished = True
        out: list[Event] = []
        usage = self.usage
        if usage is not None:
            out.append(usage)
        out.append(Finished(reason))
        return out


def parse_stream(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Events of a completion stream read incrementally from raw byte chunks.

    Raises ``UpstreamError`` when the stream ends without its ``finished`` delta, and
    ``UpstreamBlocked`` (``upstream_blocked``) when a wall arrives inside the stream.
    """
    decoder = SSEDecoder()
    interp = StreamInterpreter()
    for chunk in chunks:
        for data in decoder.feed(chunk):
            yield from interp.feed_data(data)
            if interp.finished:
                return  # Qwen may keep the connection open after finished (2026 §3)
        for line in decoder.take_stray():
            yield from interp.feed_stray(line)
    for data in decoder.close():
        yield from interp.feed_data(data)
        if interp.finished:
            return
    for line in decoder.take_stray():
        yield from interp.feed_stray(line)
    yield from interp.close()
