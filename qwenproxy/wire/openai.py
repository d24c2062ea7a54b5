"""The one place that turns internal events into OpenAI chat JSON and SSE chunks.

Every provider's events go through here, streamed or not, so all three upstreams look the
same to a client.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from ..errors import ApiError, BadRequest
from ..events import (
    Annotation,
    Event,
    Finished,
    ImageResult,
    ReasoningDelta,
    ResponseStarted,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from .pieces import joined
from .structured import ResponseFormat
from .tools import ToolSpec

DONE = "data: [DONE]\n\n"
PING = ": ping\n\n"


def sse(obj: Any) -> str:
    """One SSE event carrying a JSON object."""
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def completion_id(response_id: str | None = None) -> str:
    return response_id or f"chatcmpl-{uuid.uuid4().hex}"


def usage_dict(usage: Usage | None) -> dict[str, Any]:
    usage = usage or Usage()
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    details = (usage.raw or {}).get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        out["completion_tokens_details"] = {"reasoning_tokens": details["reasoning_tokens"]}
    return out


THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"
_MARK = "\x00qwenproxy-text\x00"  # where a content chunk's text goes (ChunkRenderer.content_frame)
_MARK_JSON = json.dumps(_MARK)


def url_citations(annotations: list[Annotation], text: str) -> list[dict[str, Any]]:
    """OpenAI ``url_citation`` annotations; source *n* spans the first ``[[n]]`` in ``text``
    (Qwen's citation mark, §4.5), or 0..0 when the answer never cites it."""
    out = []
    for n, a in enumerate(annotations, 1):
        mark = f"[[{n}]]"
        start = text.find(mark)
        end = start + len(mark) if start >= 0 else 0
        out.append(
            {
                "type": "url_citation",
                "url_citation": {"url": a.url, "title": a.title, "start_index": max(start, 0), "end_index": end},
            }
        )
    return out


@dataclass
class Collected:
    """Everything a finished (or interrupted) answer produced."""

    started: ResponseStarted | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    annotations: list[Annotation] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    _text: list[str] = field(default_factory=list, repr=False)
    _reasoning: list[str] = field(default_factory=list, repr=False)
    _calls: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)
    _arguments: dict[int, list[str]] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return joined(self._text)

    @property
    def reasoning(self) -> str:
        return joined(self._reasoning)

    @property
    def tool_calls(self) -> dict[int, dict[str, Any]]:
        """OpenAI tool calls by index, their ``arguments`` joined."""
        for index, call in self._calls.items():
            call["function"]["arguments"] = joined(self._arguments[index])
        return self._calls

    def add(self, event: Event) -> None:
        if isinstance(event, ResponseStarted):
            self.started = event
        elif isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finished):
            self.finish_reason = event.reason
        elif isinstance(event, ToolCallDelta):
            call = self._calls.setdefault(
                event.index,
                {"id": event.id, "type": "function", "function": {"name": event.name or "", "arguments": ""}},
            )
            if event.id:
                call["id"] = event.id
            if event.name:
                call["function"]["name"] = event.name
            self._arguments.setdefault(event.index, []).append(event.arguments)
        elif isinstance(event, Annotation):
            self.annotations.append(event)
        elif isinstance(event, ImageResult):
            self.images.append(event.url)

    def message(self, *, reasoning_in_content: bool = False) -> dict[str, Any]:
        """The assistant message; ``reasoning_in_content`` wraps the reasoning in
        ``<think>…</think>`` at the start of ``content`` instead of ``reasoning_content``."""
        text = self.text
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if self.reasoning and reasoning_in_content:
            text = message["content"] = THINK_OPEN + self.reasoning + THINK_CLOSE + text
        elif self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not text:
                message["content"] = None
        if self.annotations:
            message["annotations"] = url_citations(self.annotations, text)
        return message


def collect(events: Iterable[Event]) -> Collected:
    collected = Collected()
    for event in events:
        collected.add(event)
    return collected


def completion_response(
    collected: Collected,
    *,
    id: str,
    model: str,
    created: int | None = None,
    extras: dict[str, Any] | None = None,
    reasoning_in_content: bool = False,
) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` object."""
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": int(created or time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": collected.message(reasoning_in_content=reasoning_in_content),
                "logprobs": None,
                "finish_reason": collected.finish_reason or "stop",
            }
        ],
        "usage": usage_dict(collected.usage),
    }
    if collected.usage is not None and collected.usage.raw:
        body["upstream_usage"] = collected.usage.raw
    body.update(extras or {})
    return body


class ChunkRenderer:
    """Renders a stream's events as ``chat.completion.chunk`` objects.

    Reasoning goes out as ``delta.reasoning_content`` (or, with ``reasoning_in_content``,
    as ``content`` between ``<think>`` and ``</think>``). Search sources are not part of
    OpenAI's stream delta, so they are gathered and sent once, as ``delta.annotations``
    of the final chunk (the one with ``finish_reason``).
    """

    def __init__(
        self,
        *,
        id: str,
        model: str,
        created: int | None = None,
        include_usage: bool = False,
        extras: dict[str, Any] | None = None,
        reasoning_in_content: bool = False,
    ) -> None:
        self.reasoning_in_content = reasoning_in_content
        self._thinking = False  # inside an open <think> of reasoning_in_content
        self._annotations: list[Annotation] = []
        self._text: list[str] = []  # content sent so far: where the citation marks are
        self.id = id
        self.model = model
        self.created = int(created or time.time())
        self.include_usage = include_usage
        self.extras = dict(extras or {})
        self.usage: Usage | None = None
        self.finished = False
        self._tool_seen: set[int] = set()
        self._frame: tuple[str, str] | None = None  # a content chunk's SSE frame around its text

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            body["usage"] = None
        body.update(self.extras)
        return body

    def role(self) -> dict[str, Any]:
        return self.chunk({"role": "assistant", "content": ""})

    def _content(self, text: str) -> dict[str, Any]:
        if self._thinking:
            self._thinking = False
            text = THINK_CLOSE + text
        self._text.append(text)
        return self.chunk({"content": text})

    def content_frame(self, text: str) -> str:
        """``sse(chunk)`` of a text delta, the frame around the text rendered once: a streamed
        answer is mostly these, and dumping the whole chunk each time was most of its cost."""
        if self._thinking or self._frame is None:
            frame = sse(self._content(text))
            if self._frame is None and not self._thinking:
                whole = sse(self.chunk({"content": _MARK}))
                head, _, tail = whole.partition(_MARK_JSON)
                # a model name or chat id that holds the mark itself: no template, ever
                self._frame = ("", "") if _MARK_JSON in head + tail else (head, tail)
            return frame
        if not self._frame[0]:
            return sse(self._content(text))
        self._text.append(text)
        return self._frame[0] + json.dumps(text, ensure_ascii=False) + self._frame[1]

    def render(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [self._content(event.text)] if event.text else []
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return []
            if not self.reasoning_in_content:
                return [self.chunk({"reasoning_content": event.text})]
            text = event.text if self._thinking else THINK_OPEN + event.text
            self._thinking = True
            self._text.append(text)
            return [self.chunk({"content": text})]
        if self._thinking and isinstance(event, (ToolCallDelta, Finished)):
            return [self._content(""), *self.render(event)]
        if isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {"index": event.index, "function": {"arguments": event.arguments}}
            if event.index not in self._tool_seen:
                self._tool_seen.add(event.index)
                call.update(id=event.id, type="function")
                call["function"]["name"] = event.name or ""
            return [self.chunk({"tool_calls": [call]})]
        if isinstance(event, Annotation):
            self._annotations.append(event)
            return []
        if isinstance(event, Usage):
            self.usage = event
            return []
        if isinstance(event, Finished):
            return self.finish(event.reason)
        return []

    def finish(self, reason: str = "stop") -> list[dict[str, Any]]:
        if self.finished:
            return []
        self.finished = True
        out = [self._content("")] if self._thinking else []
        delta: dict[str, Any] = {}
        if self._annotations:
            delta["annotations"] = url_citations(self._annotations, joined(self._text))
        out.append(self.chunk(delta, finish_reason=reason))
        if self.include_usage:
            final = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_dict(self.usage),
            }
            final.update(self.extras)
            out.append(final)
        return out

    @staticmethod
    def error(err: ApiError) -> dict[str, Any]:
        """An in-band error after the stream has begun."""
        return err.to_dict()


# OpenAI image sizes → aspect ratios, the ``image_size`` option (Qwen's §3.5 ``size``)
ASPECT_RATIOS: dict[str, float] = {"1:1": 1.0, "16:9": 16 / 9, "9:16": 9 / 16, "4:3": 4 / 3, "3:4": 3 / 4}
_EXACT_SIZES = {"1024x1024": "1:1", "1792x1024": "16:9", "1024x1792": "9:16"}


def aspect_ratio(size: Any) -> str | None:
    """``1024x1024`` → ``1:1``; ``1792x1024`` → ``16:9``; other ``WxH`` → the nearest ratio;
    a ratio such as ``4:3`` is kept; ``None``/``auto`` → ``None`` (Qwen's default)."""
    if size is None:
        return None
    text = str(size).strip().lower()
    if not text or text == "auto":
        return None
    if text in ASPECT_RATIOS:
        return text
    if text in _EXACT_SIZES:
        return _EXACT_SIZES[text]
    sep = "x" if "x" in text else ("*" if "*" in text else ":")
    try:
        width, height = (float(p) for p in text.split(sep))
    except ValueError:
        raise ValueError(f"size must look like 1024x1024 or 16:9, not {size!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, not {size!r}")
    ratio = width / height
    return min(ASPECT_RATIOS, key=lambda r: abs(ASPECT_RATIOS[r] - ratio) / ASPECT_RATIOS[r])


# --------------------------------------------------------------------------- requests
#
# Each request is a pydantic model: its fields are the OpenAPI schema (api/openapi.py) and
# their validators the checks. A check raises ``BadRequest`` itself (pydantic lets any error
# but ValueError/AssertionError through), so a client sees OpenAI's error with the same
# message and ``param`` as before; fields are validated in order, so the first bad field wins.

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
IMAGE_FORMATS = ("url", "b64_json")
OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_IMAGES = 4  # each image is one upstream chat turn
# Qwen's chat types a client may ask for by name (2026 §6), and the mode flag each one is
CHAT_TYPES = ("t2t", "search", "t2i", "image_edit", "t2v", "deep_research")
CHAT_TYPE_FLAGS = {
    "search": "search",
    "t2i": "image",
    "image_edit": "image",
    "t2v": "video",
    "deep_research": "research",
}


T = TypeVar("T")


def parse_request(parse: Callable[..., T], *args: Any) -> T:
    """``parse(*args)``; a pydantic error that no check foresaw is still a 400 in OpenAI's shape."""
    try:
        return parse(*args)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise BadRequest(f"`{param}`: {first['msg']}", param=param) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(test: Callable[[Any], bool], message: str, param: str, *, none: bool = True) -> BeforeValidator:
    """A field check: ``test(value)`` or ``BadRequest(message, param)``; ``None`` passes
    when ``none`` (an absent optional field)."""

    def validate(value: Any) -> Any:
        if (value is None and none) or (value is not None and test(value)):
            return value
        raise BadRequest(message, param=param)

    return BeforeValidator(validate)


def _between(key: str, lo: float, hi: float) -> BeforeValidator:
    return _check(lambda v: _is_number(v) and lo <= v <= hi, f"`{key}` must be a number between {lo} and {hi}", key)


def _string(key: str) -> BeforeValidator:
    return _check(lambda v: isinstance(v, str), f"`{key}` must be a string", key)


def _boolean(key: str) -> BeforeValidator:
    return _check(lambda v: isinstance(v, bool), f"`{key}` must be a boolean", key)


def _positive(key: str) -> BeforeValidator:
    return _check(lambda v: _is_int(v) and v >= 1, f"`{key}` must be a positive integer", key)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI ``messages``: objects with a known role and string or part-list content, one
    of them from the user."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty array (Сообщения не указаны)", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {sorted(ROLES)}", param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
        if isinstance(content, list) and not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
        ):
            raise BadRequest(
                f"messages[{i}].content parts must be objects with a `type`", param=f"messages[{i}].content"
            )
    if not any(m.get("role") == "user" for m in messages):
        raise BadRequest("No user message in `messages` (В запросе нет сообщений от пользователя)", param="messages")
    return messages


class ContentPart(BaseModel):
    """One part of a message's content (``text``, ``image_url``, ``file``, the seed's ``image``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    """An OpenAI chat message (its other fields, ``tool_calls`` and the like, pass through)."""

    model_config = ConfigDict(extra="allow")

    role: Literal[ROLES]
    content: str | list[ContentPart] | None = None
    name: str | None = None


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A reference to ``model``'s schema from a schema written by hand (a field kept as plain
    JSON); ``api/openapi.py`` turns ``x-ref`` into ``$ref`` (pydantic resolves ``$ref`` itself)."""
    return {"x-ref": model.__name__}


def _stop(value: Any) -> Any:
    stop = [value] if isinstance(value, str) else value
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("`stop` must be a string or an array of strings", param="stop")
    return stop


def _size(value: Any) -> str | None:
    try:
        return aspect_ratio(value)
    except ValueError as exc:
        raise BadRequest(str(exc), param="size") from None


def _response_format(value: Any) -> Any:
    ResponseFormat.parse(value)  # 400 when malformed; the dict itself travels on (serving/structured.py)
    return value


_JSON_SCHEMA_FORMAT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": {"type": "string"},
        "schema": {"type": "object", "description": "a JSON Schema"},
        "strict": {"type": "boolean"},
    },
}
RESPONSE_FORMAT_SCHEMA = {
    "oneOf": [
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["text"]}}},
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "enum": ["json_object"]}}},
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {"type": {"type": "string", "enum": ["json_schema"]}, "json_schema": _JSON_SCHEMA_FORMAT},
        },
    ],
    "description": "JSON mode or structured outputs: the answer is checked and repaired once (extension: any provider)",
}


class ChatOptions(BaseModel):
    """Everything of a chat request but its messages, in the order it is checked."""

    model_config = ConfigDict(extra="ignore")

    stream: Annotated[
        bool, _check(lambda v: isinstance(v, bool), "`stream` must be a boolean", "stream", none=False)
    ] = Field(False, validate_default=True)
    model: Annotated[str | None, _string("model")] = None
    max_tokens: Annotated[int | None, _positive("max_tokens")] = Field(None, ge=1)
    max_completion_tokens: SkipJsonSchema[Any] = None  # folded into max_tokens
    stop: Annotated[str | list[str] | None, BeforeValidator(_stop)] = None
    stream_options: Annotated[
        dict[str, Any] | None,
        _check(lambda v: isinstance(v, dict), "`stream_options` must be an object", "stream_options"),
        WithJsonSchema({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
    ] = None
    chatId: Annotated[str | None, _string("chatId")] = Field(None, description="continue this chat (extension)")
    parentId: Annotated[str | None, _string("parentId")] = Field(
        None, description="answer after this message (extension)"
    )
    chat_id: Annotated[str | None, _string("chat_id")] = None
    parent_id: Annotated[str | None, _string("parent_id")] = None
    tools: Annotated[
        list[Any] | None,
        _check(lambda v: isinstance(v, list), "`tools` must be an array", "tools"),
        WithJsonSchema({"type": "array", "items": {"type": "object"}}),
    ] = None
    parallel_tool_calls: Annotated[Any, WithJsonSchema({"type": "boolean"})] = None
    tool_choice: Annotated[Any, WithJsonSchema({})] = None
    # ToolSpec.parse, once per request, at the place the checks always ran it
    tool_spec: SkipJsonSchema[Any] = Field(None, validate_default=True, exclude=True)
    temperature: Annotated[float | None, _between("temperature", 0, 2)] = Field(None, ge=0, le=2)
    top_p: Annotated[float | None, _between("top_p", 0, 1)] = Field(None, ge=0, le=1)
    reasoning_effort: Annotated[
        Literal[REASONING_EFFORTS] | None,
        _check(
            lambda v: v in REASONING_EFFORTS,
            f"`reasoning_effort` must be one of {list(REASONING_EFFORTS)}",
            "reasoning_effort",
        ),
    ] = None
    enable_thinking: Annotated[bool | None, _boolean("enable_thinking")] = None
    thinking_budget: Annotated[int | None, _positive("thinking_budget")] = Field(None, ge=1)
    web_search_options: Annotated[
        dict[str, Any] | None,
        _check(lambda v: isinstance(v, dict), "`web_search_options` must be an object", "web_search_options"),
    ] = None
    enable_search: Annotated[bool | None, _boolean("enable_search")] = None
    size: Annotated[str | None, BeforeValidator(_size), WithJsonSchema({"type": "string"})] = None
    chat_type: Annotated[
        Literal[CHAT_TYPES] | None,
        _check(lambda v: v in CHAT_TYPES, f"`chat_type` must be one of {list(CHAT_TYPES)}", "chat_type"),
    ] = Field(None, description="Qwen's mode, instead of a model suffix (extension)")
    modalities: Annotated[
        list[str] | None,
        _check(
            lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
            "`modalities` must be an array of strings",
            "modalities",
        ),
    ] = Field(None, description='"image" or "video" among them picks that mode')
    response_format: Annotated[
        dict[str, Any] | None, BeforeValidator(_response_format), WithJsonSchema(RESPONSE_FORMAT_SCHEMA)
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """``max_completion_tokens`` and the legacy ``functions``/``function_call`` (seed §7.3)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "max_tokens" not in data and "max_completion_tokens" in data:
            data["max_tokens"] = data["max_completion_tokens"]
        if data.get("tools") is None and isinstance(data.get("functions"), list):
            data["tools"] = [{"type": "function", "function": fn} for fn in data["functions"]]
        if data.get("tool_choice") is None and data.get("function_call") is not None:
            legacy = data["function_call"]
            data["tool_choice"] = {"type": "function", "function": legacy} if isinstance(legacy, dict) else legacy
        return data

    @field_validator("tool_spec", mode="before")
    @classmethod
    def _tool_spec(cls, _value: Any, info: ValidationInfo) -> ToolSpec:
        data = info.data
        return ToolSpec.parse(data.get("tools"), data.get("tool_choice"), data.get("parallel_tool_calls"))

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def conversation(self) -> tuple[str | None, str | None]:
        """``(chat id, parent id)`` the client continues from (the extension fields)."""
        return self.chatId or self.chat_id, self.parentId or self.parent_id

    def mode_options(self) -> dict[str, Any]:
        """Fields that pick a mode (docs/MODES.md) as ``ChatRequest.options`` flags; they win
        over a model-name suffix."""
        out: dict[str, Any] = {}
        if self.reasoning_effort is not None:
            out["thinking"] = self.reasoning_effort != "none"
        if self.enable_thinking is not None:
            out["thinking"] = self.enable_thinking
        if self.thinking_budget is not None:
            out["thinking_budget"] = self.thinking_budget
        if self.web_search_options is not None:
            out["search"] = True
        if self.enable_search is not None:
            out["search"] = self.enable_search
        if self.size is not None:
            out["image_size"] = self.size
        for kind in ("image", "video"):
            if kind in (self.modalities or ()):
                out[kind] = True
        if self.chat_type is not None:
            out["chat_type"] = self.chat_type
            flag = CHAT_TYPE_FLAGS.get(self.chat_type)
            if flag:
                out[flag] = True
        if self.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = bool(self.parallel_tool_calls)
        return out


class _Messages(BaseModel):
    messages: Annotated[
        list[dict[str, Any]],
        BeforeValidator(check_messages),
        WithJsonSchema({"type": "array", "minItems": 1, "items": schema_ref(Message)}),
    ]


class ChatCompletionRequest(ChatOptions, _Messages):
    """``POST /api/chat/completions``: ``messages`` (checked first), then ``ChatOptions``."""

    @classmethod
    def parse(cls, body: dict[str, Any], messages: Any) -> ChatCompletionRequest:
        """The request for ``body`` with these ``messages`` (the seed's ``/api/chat`` makes them)."""
        return cls.model_validate({**body, "messages": messages})


def _simple_message(value: Any) -> Any:
    if value is None or value in ("", []):
        raise BadRequest("`message` is required (Сообщение не указано)", param="message")
    if not isinstance(value, (str, list)):
        raise BadRequest(
            "`message` must be a string or an array of parts (Неподдерживаемый формат сообщения)", param="message"
        )
    if isinstance(value, list) and not all(
        isinstance(p, dict) and p.get("type") in ("text", "image", "file", "image_url") for p in value
    ):
        raise BadRequest("Malformed message parts (Некорректная структура составного сообщения)", param="message")
    return value


class SimpleChatRequest(BaseModel):
    """The seed's ``POST /api/chat``: ``messages`` with a user message, else ``message``; the
    other fields are ``ChatOptions``'."""

    model_config = ConfigDict(extra="allow")

    message: Annotated[
        str | list[ContentPart] | None,
        WithJsonSchema(
            {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": schema_ref(ContentPart)},
                ]
            }
        ),
    ] = None
    messages: Annotated[Any, WithJsonSchema({"type": "array", "items": schema_ref(Message)})] = None
    model: str | None = None
    stream: bool | None = None
    chatId: str | None = None
    parentId: str | None = None

    @staticmethod
    def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat messages this body asks for (``message`` checked only when it is used)."""
        messages = body.get("messages")
        if isinstance(messages, list) and any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
            return messages
        return [{"role": "user", "content": _simple_message(body.get("message"))}]


class ImageRequest(BaseModel):
    """``POST /api/images/generations`` (OpenAI's images API on Qwen's ``t2i`` mode)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["prompt"]})

    prompt: Annotated[
        str,
        _check(lambda v: isinstance(v, str) and v.strip(), "`prompt` must be a non-empty string", "prompt", none=False),
    ] = Field(None, validate_default=True, json_schema_extra={"minLength": 1})
    n: Annotated[
        int,
        _check(
            lambda v: _is_int(v) and 1 <= v <= MAX_IMAGES, f"`n` must be an integer between 1 and {MAX_IMAGES}", "n"
        ),
    ] = Field(1, ge=1, le=MAX_IMAGES, validate_default=True)
    response_format: Annotated[
        Literal[IMAGE_FORMATS] | None,
        _check(lambda v: v in IMAGE_FORMATS, "`response_format` must be url or b64_json", "response_format"),
        BeforeValidator(lambda v: v or "url"),  # runs first (before-validators run right to left)
        WithJsonSchema({"type": "string", "enum": list(IMAGE_FORMATS)}),
    ] = Field("url", validate_default=True)
    size: Annotated[str | None, BeforeValidator(_size), WithJsonSchema({"type": "string"})] = Field(
        None, validate_default=True
    )
    model: Annotated[str | None, _string("model")] = None

    @property
    def ratio(self) -> str:
        return self.size or "1:1"


MAX_PROMPTS = 16  # prompts × n of one legacy completion: each is an upstream turn


def _prompt(value: Any) -> Any:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(p, str) and p for p in value):
        if len(value) > MAX_PROMPTS:
            raise BadRequest(f"`prompt` may hold at most {MAX_PROMPTS} prompts", param="prompt")
        return value
    if isinstance(value, list) and value and all(_is_int(t) or isinstance(t, list) for t in value):
        raise BadRequest("`prompt` as token ids is not supported: send the text", param="prompt")
    raise BadRequest("`prompt` must be a non-empty string or an array of non-empty strings", param="prompt")


def _unsupported(key: str, allowed: Callable[[Any], bool]) -> BeforeValidator:
    return _check(allowed, f"`{key}` is not supported by this gateway", key)


class CompletionRequest(BaseModel):
    """``POST /api/completions``: OpenAI's legacy text completion, each prompt a chat turn of
    its own (LlamaIndex's ``OpenAILike`` calls it by default)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["prompt"]})

    prompt: Annotated[
        str | list[str],
        BeforeValidator(_prompt),
        WithJsonSchema(
            {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_PROMPTS,
                        "items": {"type": "string", "minLength": 1},
                    },
                ]
            }
        ),
    ] = Field(None, validate_default=True)
    model: Annotated[str | None, _string("model")] = None
    stream: Annotated[
        bool, _check(lambda v: isinstance(v, bool), "`stream` must be a boolean", "stream", none=False)
    ] = Field(False, validate_default=True)
    max_tokens: Annotated[int | None, _positive("max_tokens")] = Field(None, ge=1)
    stop: Annotated[str | list[str] | None, BeforeValidator(_stop)] = None
    temperature: Annotated[float | None, _between("temperature", 0, 2)] = Field(None, ge=0, le=2)
    top_p: Annotated[float | None, _between("top_p", 0, 1)] = Field(None, ge=0, le=1)
    n: Annotated[
        int,
        _check(
            lambda v: _is_int(v) and 1 <= v <= MAX_PROMPTS, f"`n` must be an integer between 1 and {MAX_PROMPTS}", "n"
        ),
    ] = Field(1, ge=1, le=MAX_PROMPTS)
    echo: Annotated[bool | None, _boolean("echo")] = None
    suffix: Annotated[None, _unsupported("suffix", lambda v: v is None)] = None
    logprobs: Annotated[int | None, _unsupported("logprobs", lambda v: v == 0)] = Field(None, ge=0, le=0)
    best_of: Annotated[int | None, _unsupported("best_of", lambda v: v == 1)] = Field(None, ge=1, le=1)
    stream_options: Annotated[
        dict[str, Any] | None,
        _check(lambda v: isinstance(v, dict), "`stream_options` must be an object", "stream_options"),
        WithJsonSchema({"type": "object", "properties": {"include_usage": {"type": "boolean"}}}),
    ] = None

    @model_validator(mode="after")
    def _not_too_many(self) -> CompletionRequest:
        if len(self.prompts) * self.n > MAX_PROMPTS:
            raise BadRequest(f"`prompt` × `n` may ask for at most {MAX_PROMPTS} completions", param="n")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CreateFileForm(BaseModel):
    """``POST /api/files`` (multipart), OpenAI's file upload; checked in ``api/files.py``."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    purpose: Literal[OPENAI_PURPOSES]


class ListFilesQuery(BaseModel):
    """``GET /api/files``; checked in ``api/files.py``."""

    purpose: str | None = None
    order: Literal["asc", "desc"] | None = None
    limit: int | None = Field(None, ge=1, le=10000)
    after: str | None = None


# --------------------------------------------------------------------------- response shapes
# (documentation: the bodies themselves are built by ``completion_response`` and the routes)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class Error(BaseModel):
    """Every error of the OpenAI routes."""

    error: ErrorDetail


class ChatCompletion(BaseModel):
    id: str
    object: str
    created: int | None = None
    model: str | None = None
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None
    chatId: str | None = None
    parentId: str | None = None


class TextCompletion(BaseModel):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ModelEntry(BaseModel):
    id: str
    object: str
    owned_by: str | None = None


class ModelList(BaseModel):
    object: str
    data: list[ModelEntry]
