"""Anthropic's Messages API on the internal event stream: the request model, its conversion
to the OpenAI-format messages every provider takes, and the renderer of the answer.

Flask-free. Claude Code, Cline and OpenCode speak this API; the gateway answers it from the
same providers, the same tool-call emulation (``wire.tools``) and the same stream loop as
the OpenAI routes. What Qwen cannot do is accepted and ignored (``cache_control``, thinking
blocks sent back, ``top_k``), never an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from ..errors import ApiError, BadRequest
from ..events import Event, Finished, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from .openai import Collected
from .pieces import Growing

# --------------------------------------------------------------------------- errors

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_status(err: ApiError) -> int:
    """The status Anthropic would answer: a gateway with no usable account (503) is
    "overloaded" (529, which Claude Code retries), any other upstream failure ``api_error``."""
    if err.status == 503:
        return 529
    if err.code == "upstream_timeout":
        return 504
    if err.status >= 500 and err.status not in ERROR_TYPES:
        return 500
    return err.status


def error_body(err: ApiError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``."""
    kind = ERROR_TYPES.get(error_status(err), "invalid_request_error" if err.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


# --------------------------------------------------------------------------- request model


class _Model(BaseModel):
    # clients send fields this gateway has no use for (cache_control, citations, container,
    # context_management, output_config, …): accepted and ignored, as the API would
    model_config = ConfigDict(extra="allow")


class TextBlock(_Model):
    type: Literal["text"]
    text: str


class Source(_Model):
    type: Literal["base64", "url", "text", "file", "content"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    file_id: str | None = None
    content: Any = None


class ImageBlock(_Model):
    type: Literal["image"]
    source: Source


class DocumentBlock(_Model):
    type: Literal["document"]
    source: Source
    title: str | None = None


class ToolUseBlock(_Model):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


def _block_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _BLOCK_TAGS else "other"


class OtherBlock(_Model):
    """Any other block (``thinking``, ``redacted_thinking``, ``search_result``, server tool
    blocks): kept for its text when it has one, else ignored."""

    type: str


ResultPart = Annotated[
    Union[
        Annotated[TextBlock, Tag("text")],
        Annotated[ImageBlock, Tag("image")],
        Annotated[DocumentBlock, Tag("document")],
        Annotated[OtherBlock, Tag("other")],
    ],
    Discriminator(lambda v: {"text": "text", "image": "image", "document": "document"}.get(_block_kind(v), "other")),
]


class ToolResultBlock(_Model):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None


_BLOCK_TAGS = ("text", "image", "document", "tool_use", "tool_result")

Block = Annotated[
    Union[
        Annotated[TextBlock, Tag("text")],
        Annotated[ImageBlock, Tag("image")],
        Annotated[DocumentBlock, Tag("document")],
        Annotated[ToolUseBlock, Tag("tool_use")],
        Annotated[ToolResultBlock, Tag("tool_result")],
        Annotated[OtherBlock, Tag("other")],
    ],
    Discriminator(_block_kind),
]


class InputMessage(_Model):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    type: str | None = None  # None or "custom"; Anthropic's server tools have dated types


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Model):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class CountTokensRequest(_Model):
    """``POST /v1/messages/count_tokens``: a Messages request without the answer settings."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    stream: bool = False


def parse(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """``body`` as ``model``; a validation failure is a 400 naming the first bad field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("function-", "tagged-union")))
        raise BadRequest(f"{where}: {first['msg']}" if where else first["msg"], param=where or None) from None


# --------------------------------------------------------------------------- to the internal shape


@dataclass
class Converted:
    """A Messages request as the fields of a chat turn (``ChatRequest``)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # thinking, thinking_budget, parallel_tool_calls
    stop: list[str] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None

    @property
    def thinking(self) -> bool:
        return bool(self.options.get("thinking"))


def system_text(system: str | list[TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n\n".join(block.text for block in system)


def _media(block: ImageBlock | DocumentBlock) -> dict[str, Any] | None:
    """An image or document block as an OpenAI content part (uploaded like the others)."""
    src = block.source
    if isinstance(block, ImageBlock):
        if src.type == "base64" and src.data:
            return {
                "type": "image_url",
                "image_url": {"url": f"data:{src.media_type or 'image/png'};base64,{src.data}"},
            }
        if src.type == "url" and src.url:
            return {"type": "image_url", "image_url": {"url": src.url}}
        if src.type == "file" and src.file_id:
            return {"type": "image_url", "image_url": {"url": src.file_id}}
        raise BadRequest("An image block needs a base64, url or file source", param="source")
    if src.type == "text":
        title = f"{block.title}\n" if block.title else ""
        return {"type": "text", "text": f"{title}{src.data or ''}"}
    if src.type == "content":
        parts = src.content if isinstance(src.content, list) else [{"type": "text", "text": str(src.content or "")}]
        return {"type": "text", "text": "\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))}
    name = block.title or "document.pdf"
    if src.type == "base64" and src.data:
        media_type = src.media_type or "application/pdf"
        return {"type": "file", "file": {"file_data": f"data:{media_type};base64,{src.data}", "filename": name}}
    if src.type == "url" and src.url:
        return {"type": "file", "file": {"url": src.url, "filename": name}}
    if src.type == "file" and src.file_id:
        return {"type": "file", "file": {"file_id": src.file_id}}
    raise BadRequest("A document block needs a base64, text, url or file source", param="source")


def _other_text(block: OtherBlock) -> str | None:
    """The text an unfamiliar block carries (``search_result`` and the like), if any."""
    if block.type in ("thinking", "redacted_thinking"):
        return None  # our own earlier reasoning: the upstream has it or never needs it
    extra = block.model_extra or {}
    if isinstance(extra.get("text"), str):
        return extra["text"]
    content = extra.get("content")
    if isinstance(content, list):
        texts = [str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(texts) or None
    return None


def _parts(blocks: Iterable[Any]) -> list[dict[str, Any]]:
    """Text/image/document blocks as OpenAI content parts (other blocks by their text)."""
    out: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, TextBlock):
            out.append({"type": "text", "text": block.text})
        elif isinstance(block, (ImageBlock, DocumentBlock)):
            part = _media(block)
            if part is not None:
                out.append(part)
        elif isinstance(block, OtherBlock):
            text = _other_text(block)
            if text:
                out.append({"type": "text", "text": text})
    return out


def _flatten(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A content string when every part is text (what most providers handle best)."""
    if all(p.get("type") == "text" for p in parts):
        return "\n".join(str(p["text"]) for p in parts)
    return parts


def _tool_result(block: ToolResultBlock) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``role: "tool"`` message, and the result's images/files (they go with the next user turn)."""
    content = block.content
    if content is None:
        text, media = "", []
    elif isinstance(content, str):
        text, media = content, []
    else:
        parts = _parts(content)
        text = "\n".join(str(p["text"]) for p in parts if p.get("type") == "text")
        media = [p for p in parts if p.get("type") != "text"]
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}, media


def _user(message: InputMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    pending: list[Any] = []
    carried: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            tool, media = _tool_result(block)
            out.append(tool)
            carried += media
        elif isinstance(block, ToolUseBlock):
            raise BadRequest("A user message cannot hold a tool_use block", param="messages")
        else:
            pending.append(block)
    parts = carried + _parts(pending)
    if parts:
        if carried and not any(p.get("type") == "text" for p in parts):
            parts.append({"type": "text", "text": "(the images above come from the tool results)"})
        out.append({"role": "user", "content": _flatten(parts)})
    return out


def _assistant(message: InputMessage) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        # thinking / redacted_thinking / images in an assistant turn: nothing to send back
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        out["tool_calls"] = calls
        out["content"] = out["content"] or None
    return out


def to_messages(request: CountTokensRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI-format messages: ``system`` first, ``tool_result`` blocks
    as ``role: "tool"`` messages, ``tool_use`` blocks as ``tool_calls``."""
    messages: list[dict[str, Any]] = []
    system = system_text(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    for message in request.messages:
        if message.role == "user":
            messages += _user(message)
        else:
            messages.append(_assistant(message))
    return messages


def _tools(request: CountTokensRequest) -> list[dict[str, Any]] | None:
    if not request.tools:
        return None
    out = []
    for i, tool in enumerate(request.tools):
        if tool.type not in (None, "custom"):
            raise BadRequest(
                f"tools.{i}: the server tool {tool.type!r} is not available through this gateway; "
                "only custom tools (name, description, input_schema) are",
                param=f"tools.{i}.type",
            )
        fn: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            fn["description"] = tool.description
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: ToolChoice | None) -> tuple[Any, bool | None]:
    """OpenAI ``tool_choice`` and ``parallel_tool_calls`` for Anthropic's ``tool_choice``."""
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise BadRequest("tool_choice.name: required when tool_choice.type is 'tool'", param="tool_choice.name")
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def convert(request: MessagesRequest) -> Converted:
    """The fields of the internal chat turn for a Messages request."""
    tools = _tools(request)
    tool_choice, parallel = _tool_choice(request.tool_choice)
    if tool_choice is not None and tool_choice != "none" and not tools:
        raise BadRequest("tool_choice: requires `tools`", param="tool_choice")
    if isinstance(tool_choice, dict) and tool_choice["function"]["name"] not in {
        t["function"]["name"] for t in tools or []
    }:
        raise BadRequest(
            f"tool_choice.name: {tool_choice['function']['name']!r} is not in `tools`", param="tool_choice"
        )
    options: dict[str, Any] = {}
    if request.thinking is not None:
        options["thinking"] = request.thinking.type != "disabled"
        if request.thinking.type == "enabled" and request.thinking.budget_tokens:
            options["thinking_budget"] = request.thinking.budget_tokens
    if parallel is not None:
        options["parallel_tool_calls"] = parallel
    if request.top_k is not None:
        options["top_k"] = request.top_k
    messages = to_messages(request)
    if not any(m["role"] == "user" for m in messages):
        raise BadRequest("messages: the conversation needs a user message with text", param="messages")
    return Converted(
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        options=options,
        stop=list(request.stop_sequences) if request.stop_sequences else None,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
    )


# --------------------------------------------------------------------------- token estimate

IMAGE_TOKENS = 1600  # Anthropic's figure for an image at its largest size (about 1.15 megapixels)
TOKEN_RULE = "ceil(UTF-8 bytes / 4) of the system prompt, messages and tool definitions; 1,600 per image"


def estimate_tokens(request: CountTokensRequest) -> int:
    """An estimate of the input tokens (``TOKEN_RULE``): the gateway has no tokenizer for
    every model it serves, and Claude Code only needs the size to plan compaction."""
    dumped = request.model_dump(include={"system", "messages", "tools"}, exclude_none=True)
    images = 0

    def strip(value: Any) -> Any:
        nonlocal images
        if isinstance(value, dict):
            source = value.get("source")
            media = value.get("type") in ("image", "document") and isinstance(source, dict)
            if media and source.get("type") in ("base64", "url", "file"):
                images += 1
                return None
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    text = json.dumps(strip(dumped), ensure_ascii=False, separators=(",", ":"))
    return max(1, math.ceil(len(text.encode("utf-8")) / 4) + images * IMAGE_TOKENS)


# --------------------------------------------------------------------------- model names

DEFAULT_MODEL_MAP = "opus=auto:max,sonnet=auto:max,haiku=auto:fast"


def parse_model_map(setting: str | None) -> dict[str, list[str]]:
    """``ANTHROPIC_MODEL_MAP``: ``name=target,…``; a target may list candidates with ``|``
    (the first one served wins) or be ``auto:max`` / ``auto:fast`` (picked from the live list)."""
    out: dict[str, list[str]] = {}
    for entry in str(setting or "").split(","):
        name, sep, target = entry.partition("=")
        if sep and name.strip() and target.strip():
            out[name.strip().lower()] = [t.strip() for t in target.split("|") if t.strip()]
    return out


def _version(model: str) -> tuple[float, ...]:
    numbers = re.findall(r"\d+(?:\.\d+)?", model)
    return tuple(float(n) for n in numbers[:1])


# mode variants and models made for something else than text and code
_NOT_FOR_AGENTS = re.compile(r"-(thinking|search|image|video|research)$|omni|-vl|qvq|vl-", re.IGNORECASE)


def pick(rule: str, served: list[str]) -> str | None:
    """A model for ``auto:max`` (the newest coder/max model) or ``auto:fast`` (the newest
    small coder, else flash/turbo/plus model) among the served Qwen ids."""
    qwen = [m for m in served if m.lower().startswith(("qwen", "qwq")) and not _NOT_FOR_AGENTS.search(m)]
    if rule == "auto:max":
        preferences = [("coder", "plus"), ("coder", "max"), ("max",), ("plus",), ()]
    else:
        preferences = [("coder", "flash"), ("coder", "a3b"), ("flash",), ("turbo",), ("plus",), ()]
    for words in preferences:
        found = [m for m in qwen if all(w in m.lower() for w in words)]
        if found:
            return max(found, key=lambda m: (_version(m), -qwen.index(m)))
    return None


def resolve_model(requested: str, setting: str | None, served: list[str]) -> str | None:
    """The served model a ``claude-*`` name stands for (``None``: the gateway's default).

    A name the gateway serves is used as it is; an exact entry of the map wins over a
    family entry (``opus``, ``sonnet``, ``haiku``); other ``claude-*`` names use ``sonnet``'s."""
    if requested in served or not requested.lower().startswith("claude"):
        return requested
    mapping = {**parse_model_map(DEFAULT_MODEL_MAP), **parse_model_map(setting)}
    lowered = requested.lower()
    targets = mapping.get(lowered)
    if targets is None:
        family = next((f for f in ("opus", "sonnet", "haiku") if f in lowered), "sonnet")
        targets = mapping.get(family) or mapping.get("sonnet") or []
    for target in targets:
        choice = pick(target, served) if target.startswith("auto:") else target if target in served else None
        if choice:
            return choice
    return targets[-1] if targets and not targets[-1].startswith("auto:") else None


# --------------------------------------------------------------------------- answer


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def tool_use_id(internal: str | None) -> str:
    """``toolu_…`` for an internal ``call_…`` id (the suffix is kept, so logs line up)."""
    if internal and internal.startswith("toolu_"):
        return internal
    suffix = internal[5:] if internal and internal.startswith("call_") else (internal or uuid.uuid4().hex[:24])
    return "toolu_" + suffix


STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def signature(text: str) -> str:
    """An opaque ``signature`` for a thinking block (clients send it back; we ignore it)."""
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def frame(name: str, data: dict[str, Any]) -> str:
    """One SSE event as Anthropic sends it: ``event:`` line, then the JSON ``data:`` line."""
    return f"event: {name}\ndata: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


class MessageRenderer:
    """The internal events of one answer as Anthropic's stream, and as the final message.

    Blocks open and close in order (thinking, text, tool_use…); a thinking block ends with
    its ``signature_delta``. Reasoning is shown only when the request enabled thinking.
    The same instance builds the non-streamed message (``message``), so both agree.

    ``stop_sequences`` are applied here, since most upstreams ignore them: text that may
    begin one is held back, and the answer ends at the first one (``stop_sequence``); what
    the upstream writes after it is not shown.
    """

    keepalive = frame("ping", {"type": "ping"})

    def __init__(
        self,
        *,
        id: str,
        model: str,
        input_tokens: int = 0,
        thinking: bool = False,
        stop_sequences: list[str] | None = None,
    ) -> None:
        self.id = id
        self.model = model
        self.input_tokens = input_tokens
        self.thinking = thinking
        self.blocks: list[dict[str, Any]] = []
        self._open: str | None = None  # "thinking" | "text" | "tool:<index>"
        self._tool_blocks: dict[int, int] = {}  # internal call index -> block index
        self._arguments: dict[int, str] = {}
        self._growing = Growing()  # block texts and arguments, joined when read
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.stops = [s for s in stop_sequences or [] if s]
        self.stop_sequence: str | None = None
        self._held = ""  # text that may be the start of a stop sequence
        self.finished = False
        self.failed = False

    # --- the message object
    def _usage(self) -> dict[str, Any]:
        usage = self.usage
        return {
            "input_tokens": (usage.prompt_tokens if usage and usage.prompt_tokens else self.input_tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": usage.completion_tokens if usage else 0,
        }

    def message(self) -> dict[str, Any]:
        """The ``message`` object as it stands (complete after ``finish``)."""
        self._growing.settle()
        content = []
        for block in self.blocks:
            shown = dict(block)
            if shown["type"] == "tool_use":
                shown["input"] = _parse_input(self._arguments.get(shown.pop("_index"), ""))
            content.append(shown)
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self._usage(),
        }

    def replay(self, collected: Collected) -> dict[str, Any]:
        """The non-streamed message of a collected answer (once; then the same message)."""
        if self.finished:
            return self.message()
        events: list[Event] = []
        if collected.reasoning:
            events.append(ReasoningDelta(collected.reasoning))
        if collected.text:
            events.append(TextDelta(collected.text))
        for index in sorted(collected.tool_calls):
            call = collected.tool_calls[index]
            fn = call.get("function") or {}
            events.append(ToolCallDelta(index, call.get("id"), fn.get("name"), fn.get("arguments") or ""))
        if collected.usage is not None:
            events.append(collected.usage)
        for event in events:
            self.render(event)
        self.finish(collected.finish_reason or "stop")
        return self.message()

    # --- the stream
    def start(self) -> list[str]:
        message = self.message()
        message["usage"] = {**message["usage"], "output_tokens": 1}
        return [frame("message_start", {"type": "message_start", "message": message}), self.keepalive]

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        index = len(self.blocks) - 1
        out = []
        if self._open == "thinking":
            self._growing.settle()
            sig = signature(self.blocks[index]["thinking"])
            self.blocks[index]["signature"] = sig
            out.append(self._delta(index, {"type": "signature_delta", "signature": sig}))
        self._open = None
        out.append(frame("content_block_stop", {"type": "content_block_stop", "index": index}))
        return out

    def _begin(self, kind: str, block: dict[str, Any]) -> list[str]:
        out = self._close()
        self.blocks.append(block)
        self._open = kind
        shown = {k: v for k, v in block.items() if not k.startswith("_")}
        out.append(
            frame(
                "content_block_start",
                {"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": shown},
            )
        )
        return out

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> str:
        return frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def render(self, event: Event) -> list[str]:
        if self.finished:
            return []
        if isinstance(event, ReasoningDelta):
            if not self.thinking or not event.text:
                return []
            out = (
                []
                if self._open == "thinking"
                else self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            )
            self._growing.add(self.blocks[-1], "thinking", event.text)
            return [*out, self._delta(len(self.blocks) - 1, {"type": "thinking_delta", "thinking": event.text})]
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, ToolCallDelta):
            return [*self._release(), *self._tool(event)]
        if isinstance(event, Usage):
            self.usage = event
            return []
        if isinstance(event, Finished):
            return self.finish(event.reason)
        return []  # search sources and image results have no place in this API

    def _emit(self, text: str) -> list[str]:
        if not text:
            return []
        out = [] if self._open == "text" else self._begin("text", {"type": "text", "text": ""})
        self._growing.add(self.blocks[-1], "text", text)
        return [*out, self._delta(len(self.blocks) - 1, {"type": "text_delta", "text": text})]

    def _release(self) -> list[str]:
        """Held-back text that turned out not to start a stop sequence."""
        held, self._held = self._held, ""
        return self._emit(held)

    def _text(self, text: str) -> list[str]:
        if not self.stops:
            return self._emit(text)
        text = self._held + text
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            at, sequence = min(hits)
            self._held = ""
            out = self._emit(text[:at])
            self.stop_sequence = sequence
            return [*out, *self.finish("stop")]
        keep = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return self._emit(text[: len(text) - keep])

    def _tool(self, event: ToolCallDelta) -> list[str]:
        out: list[str] = []
        kind = f"tool:{event.index}"
        if event.index not in self._tool_blocks:
            block = {
                "type": "tool_use",
                "id": tool_use_id(event.id),
                "name": event.name or "",
                "input": {},
                "_index": event.index,
            }
            out += self._begin(kind, block)
            self._tool_blocks[event.index] = len(self.blocks) - 1
            self._arguments[event.index] = ""
        elif self._open != kind:
            # a late piece of a call whose block is closed: kept for the final message only
            self._growing.add(self._arguments, event.index, event.arguments)
            return out
        self._growing.add(self._arguments, event.index, event.arguments)
        if event.arguments:
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            out.append(self._delta(self._tool_blocks[event.index], delta))
        return out

    def finish(self, reason: str = "stop") -> list[str]:
        if self.finished:
            return []
        out = self._release()
        self.finished = True
        out += self._close()
        if self.stop_sequence is not None:
            self.stop_reason = "stop_sequence"
        elif self._tool_blocks and reason in ("stop", "tool_calls"):
            self.stop_reason = "tool_use"
        else:
            self.stop_reason = stop_reason(reason)
        usage = self._usage()
        out.append(
            frame(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                    "usage": usage,
                },
            )
        )
        return out

    def error(self, err: ApiError) -> list[str]:
        self.failed = True
        return [frame("error", error_body(err))]

    def close(self) -> list[str]:
        """``message_stop``, once the answer is saved (a client's next turn may follow it at
        once); an answer that failed ends with its ``error`` event instead."""
        return [frame("message_stop", {"type": "message_stop"})] if self.finished and not self.failed else []


def _parse_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def count_tokens_body(request: CountTokensRequest) -> dict[str, Any]:
    return {"input_tokens": estimate_tokens(request)}
