"""OpenAI's Responses API on the internal event stream: the request model, its conversion
to the OpenAI chat messages every provider takes, and the renderer of the answer.

Flask-free. Codex CLI and newer OpenAI clients speak this API. A response is an object
(``resp_…``) with typed output items, ``reasoning`` (its summary), ``message``
(``output_text``) and ``function_call``; streamed, it is a sequence of typed events each
with a ``sequence_number``. Only function tools exist here: the upstreams have no hosted
tools, so asking for one is a clear 400.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from ..errors import ApiError, BadRequest
from ..events import Annotation, Event, Finished, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from .anthropic import parse
from .openai import Collected, url_citations
from .pieces import Growing

__all__ = ["ResponseRenderer", "ResponsesRequest", "convert", "input_items", "parse"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- request model


class InputText(_Model):
    type: Literal["input_text"]
    text: str


class OutputText(_Model):
    type: Literal["output_text"]
    text: str


class Refusal(_Model):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Model):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputFile(_Model):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    filename: str | None = None


Part = Annotated[
    Union[InputText, OutputText, Refusal, InputImage, InputFile],
    Field(discriminator="type"),
]


class MessageItem(_Model):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Part]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Model):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = ""
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Model):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[Part]
    id: str | None = None
    status: str | None = None


class ReasoningItem(_Model):
    """Earlier reasoning sent back by the client: the upstream does not need it."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[Any] = Field(default_factory=list)


class ItemReference(_Model):
    type: Literal["item_reference"]
    id: str


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None and "role" in value:
            return "message"
        return kind if isinstance(kind, str) else "message"
    return getattr(value, "type", "message")


Item = Annotated[
    Union[
        Annotated[MessageItem, Tag("message")],
        Annotated[FunctionCallItem, Tag("function_call")],
        Annotated[FunctionCallOutputItem, Tag("function_call_output")],
        Annotated[ReasoningItem, Tag("reasoning")],
        Annotated[ItemReference, Tag("item_reference")],
    ],
    Discriminator(_item_kind),
]


class FunctionTool(_Model):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Reasoning(_Model):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max", "auto"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Model):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(_Model):
    """``POST /v1/responses``."""

    model: str | None = None
    input: str | list[Item] | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: str | None = None
    background: bool | None = None


class InputItemsQuery(BaseModel):
    """``GET /v1/responses/{id}/input_items``: a cursor page."""

    model_config = ConfigDict(extra="ignore")

    order: Literal["asc", "desc"] = "desc"
    after: str | None = None
    limit: int = Field(20, ge=1, le=100)


# --------------------------------------------------------------------------- to the internal shape


@dataclass
class Converted:
    """A Responses request as the fields of a chat turn (``ChatRequest``)."""

    messages: list[dict[str, Any]]  # this request's input only (instructions excluded)
    system: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    summary: bool = False  # show the reasoning as a summary

    def with_history(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages sent: instructions, the stored conversation, then this input."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + history + self.messages


def _part(part: Any) -> dict[str, Any]:
    """A Responses content part as an OpenAI chat content part."""
    if isinstance(part, (InputText, OutputText)):
        return {"type": "text", "text": part.text}
    if isinstance(part, Refusal):
        return {"type": "text", "text": part.refusal}
    if isinstance(part, InputImage):
        url = part.image_url or part.file_id
        if not url:
            raise BadRequest("input_image needs `image_url` or `file_id`", param="input")
        return {"type": "image_url", "image_url": {"url": url}}
    ref: dict[str, Any] = {}
    if part.file_id:
        ref["file_id"] = part.file_id
    elif part.file_data:
        ref["file_data"] = part.file_data
    elif part.file_url:
        ref["url"] = part.file_url
    else:
        raise BadRequest("input_file needs `file_id`, `file_data` or `file_url`", param="input")
    if part.filename:
        ref["filename"] = part.filename
    return {"type": "file", "file": ref}


def _content(content: str | list[Any]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [_part(p) for p in content]
    if all(p["type"] == "text" for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _output_text(output: str | list[Any]) -> str:
    if isinstance(output, str):
        return output
    return "".join(str(p.get("text", "")) for p in (_part(x) for x in output) if p.get("type") == "text")


def to_messages(items: str | list[Any] | None) -> list[dict[str, Any]]:
    """Input items as OpenAI chat messages; consecutive ``function_call`` items join the
    assistant message before them as its ``tool_calls``."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            out.append({"role": item.role, "content": _content(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and not isinstance(last["content"], list):
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _output_text(item.output)})
        elif isinstance(item, ItemReference):
            raise BadRequest(
                "item_reference is not supported here: send the item itself, or continue with previous_response_id",
                param="input",
            )
        # reasoning items: nothing to send upstream
    return out


def _tools(tools: list[FunctionTool] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.type == "custom":
            raise BadRequest(
                f"tools[{i}]: custom (freeform) tools are not available through this gateway; only function tools are",
                param=f"tools[{i}].type",
            )
        if tool.type != "function":
            raise BadRequest(
                f"tools[{i}]: the built-in tool {tool.type!r} is not available through this gateway; "
                "only function tools are",
                param=f"tools[{i}].type",
            )
        if not tool.name:
            raise BadRequest(f"tools[{i}].name is required", param=f"tools[{i}].name")
        fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters or {"type": "object", "properties": {}}}
        if tool.description:
            fn["description"] = tool.description
        if tool.strict is not None:
            fn["strict"] = tool.strict
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> tuple[Any, list[dict[str, Any]] | None]:
    """OpenAI chat ``tool_choice`` (and the tools left) for a Responses ``tool_choice``."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice, tools
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}, tools
        if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
            names = {t.get("name") for t in choice["tools"] if isinstance(t, dict)}
            kept = [t for t in tools or [] if t["function"]["name"] in names]
            return ("required" if choice.get("mode") == "required" else "auto"), kept or None
        raise BadRequest(
            f"tool_choice: {kind!r} names a built-in tool, which this gateway does not have", param="tool_choice"
        )
    raise BadRequest("tool_choice must be none, auto, required or a function", param="tool_choice")


def response_format(text: TextConfig | None) -> dict[str, Any] | None:
    """``text.format`` as chat completions' ``response_format``."""
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if not fmt.name or fmt.schema_ is None:
        raise BadRequest("text.format: a json_schema format needs `name` and `schema`", param="text.format")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    if fmt.description:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


def convert(request: ResponsesRequest) -> Converted:
    """The fields of the internal chat turn for a Responses request."""
    if request.background:
        raise BadRequest("background responses are not supported by this gateway", param="background")
    if request.input is None and request.previous_response_id is None:
        raise BadRequest("Missing required parameter: 'input'", param="input")
    tools = _tools(request.tools)
    tool_choice, tools = _tool_choice(request.tool_choice, tools)
    options: dict[str, Any] = {}
    reasoning = request.reasoning
    if reasoning is not None and reasoning.effort is not None:
        options["thinking"] = reasoning.effort != "none"
    if request.parallel_tool_calls is not None:
        options["parallel_tool_calls"] = request.parallel_tool_calls
    fmt = response_format(request.text)
    if fmt is not None:
        options["response_format"] = fmt
    summary = reasoning is not None and bool(reasoning.summary or reasoning.generate_summary)
    return Converted(
        messages=to_messages(request.input),
        system=request.instructions or None,
        tools=tools,
        tool_choice=tool_choice,
        options=options,
        max_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        summary=summary,
    )


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_id() -> str:
    return _new_id("resp")


def _input_part(part: Any) -> dict[str, Any]:
    dumped = part.model_dump(exclude_none=True, by_alias=True)
    if dumped.get("type") == "output_text":
        dumped.setdefault("annotations", [])
    return dumped


def input_items(items: str | list[Any] | None) -> list[dict[str, Any]]:
    """The request's input as stored items with ids (``GET /v1/responses/{id}/input_items``)."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [MessageItem(role="user", content=items)]
    out = []
    for item in items:
        if isinstance(item, MessageItem):
            content = (
                [InputText(type="input_text", text=item.content)] if isinstance(item.content, str) else item.content
            )
            if item.role == "assistant" and isinstance(item.content, str):
                content = [OutputText(type="output_text", text=item.content)]
            out.append(
                {
                    "id": item.id or _new_id("msg"),
                    "type": "message",
                    "role": item.role,
                    "content": [_input_part(p) for p in content],
                    "status": "completed",
                }
            )
        elif isinstance(item, (FunctionCallItem, FunctionCallOutputItem, ReasoningItem)):
            dumped = item.model_dump(exclude_none=True)
            prefix = {"function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}[item.type]
            dumped["id"] = item.id or _new_id(prefix)
            if item.type != "reasoning":
                dumped["status"] = "completed"
            out.append(dumped)
    return out


# --------------------------------------------------------------------------- answer


def output_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's output as OpenAI chat messages (what the next turn continues from)."""
    text = ""
    calls = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            text += "".join(p.get("text", "") for p in item.get("content") or [] if p.get("type") == "output_text")
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments", "")},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return [message]


def frame(data: dict[str, Any]) -> str:
    """One SSE event as OpenAI sends it: ``event: <type>`` then the JSON."""
    return f"event: {data['type']}\ndata: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def error_code(err: ApiError) -> str:
    """The ``error.code`` of a failed response (OpenAI's small set)."""
    return "rate_limit_exceeded" if err.status == 429 else "server_error" if err.status >= 500 else "invalid_prompt"


class ResponseRenderer:
    """The internal events of one answer as a Responses object and its stream of events.

    Output items open and close in order; each streamed event carries the next
    ``sequence_number``. The same instance gives the non-streamed object (``replay``) and
    the one that is stored, so all three agree.
    """

    keepalive = ": ping\n\n"

    def __init__(
        self,
        *,
        id: str,
        model: str,
        echo: dict[str, Any] | None = None,
        summary: bool = False,
        created_at: float | None = None,
    ) -> None:
        self.id = id
        self.model = model
        self.echo = dict(echo or {})  # request fields the object repeats (tools, tool_choice, …)
        self.summary = summary
        self.created_at = int(created_at or time.time())
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.error_info: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.usage: Usage | None = None
        self.reasoning_chars = 0
        self.annotations: list[Annotation] = []
        self._open: str | None = None  # "reasoning" | "message" | "call:<index>"
        self._calls: dict[int, int] = {}  # internal call index -> output index
        self._seq = 0
        self._growing = Growing()  # the open item's text or arguments, joined when read
        self.started = False  # streamed: start() was called
        self.finished = False
        self.completed_at: int | None = None

    # --- the object
    def _usage(self) -> dict[str, Any] | None:
        if self.usage is None and self.status == "in_progress":
            return None
        usage = self.usage or Usage()
        details = (usage.raw or {}).get("output_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if not isinstance(reasoning, int):
            reasoning = -(-self.reasoning_chars // 4)  # an estimate: the upstream did not say
        reasoning = min(reasoning, usage.completion_tokens) if usage.completion_tokens else reasoning
        return {
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        }

    def response(self) -> dict[str, Any]:
        """The response object as it stands."""
        self._growing.settle()
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": self.completed_at,
            "background": False,
            "error": self.error_info,
            "incomplete_details": self.incomplete,
            "instructions": None,
            "max_output_tokens": None,
            "model": self.model,
            "output": [_copy(item) for item in self.output],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": None,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": self._usage(),
            "user": None,
            "metadata": {},
        }
        body.update({k: v for k, v in self.echo.items() if v is not None})
        return body

    def replay(self, collected: Collected) -> dict[str, Any]:
        """The non-streamed object of a collected answer (once; then the same object)."""
        if self.finished:
            return self.response()
        events: list[Event] = []
        if collected.reasoning:
            events.append(ReasoningDelta(collected.reasoning))
        if collected.text:
            events.append(TextDelta(collected.text))
        events += collected.annotations
        for index in sorted(collected.tool_calls):
            call = collected.tool_calls[index]
            fn = call.get("function") or {}
            events.append(ToolCallDelta(index, call.get("id"), fn.get("name"), fn.get("arguments") or ""))
        if collected.usage is not None:
            events.append(collected.usage)
        for event in events:
            self.render(event)
        self.finish(collected.finish_reason or "stop")
        return self.response()

    # --- the stream
    def _event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        return frame(data)

    def start(self) -> list[str]:
        self.started = True
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def _add(self, kind: str, item: dict[str, Any]) -> list[str]:
        out = self._close()
        self.output.append(item)
        self._open = kind
        return [*out, self._event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        self._growing.settle()
        index = len(self.output) - 1
        item = self.output[index]
        out: list[str] = []
        if self._open == "reasoning":
            text = item["summary"][0]["text"]
            ids = {"item_id": item["id"], "output_index": index, "summary_index": 0}
            out.append(self._event("response.reasoning_summary_text.done", **ids, text=text))
            out.append(self._event("response.reasoning_summary_part.done", **ids, part=dict(item["summary"][0])))
        elif self._open == "message":
            part = item["content"][0]
            if self.annotations:
                part["annotations"] = [
                    {"type": "url_citation", **a["url_citation"]} for a in url_citations(self.annotations, part["text"])
                ]
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out.append(self._event("response.output_text.done", **ids, text=part["text"], logprobs=[]))
            out.append(self._event("response.content_part.done", **ids, part=dict(part)))
        else:
            ids = {"item_id": item["id"], "output_index": index}
            out.append(self._event("response.function_call_arguments.done", **ids, arguments=item["arguments"]))
        item["status"] = "completed"
        if item["type"] == "reasoning":
            item.pop("status")
        self._open = None
        out.append(self._event("response.output_item.done", output_index=index, item=_copy(item)))
        return out

    def render(self, event: Event) -> list[str]:
        if self.finished:
            return []
        if isinstance(event, ReasoningDelta):
            self.reasoning_chars += len(event.text)
            if not self.summary or not event.text:
                return []
            out: list[str] = []
            if self._open != "reasoning":
                out += self._add(
                    "reasoning", {"id": _new_id("rs"), "type": "reasoning", "summary": [], "status": "in_progress"}
                )
                part = {"type": "summary_text", "text": ""}
                self.output[-1]["summary"].append(part)
                ids = {"item_id": self.output[-1]["id"], "output_index": len(self.output) - 1, "summary_index": 0}
                out.append(self._event("response.reasoning_summary_part.added", **ids, part=dict(part)))
            item = self.output[-1]
            self._growing.add(item["summary"][0], "text", event.text)
            ids = {"item_id": item["id"], "output_index": len(self.output) - 1, "summary_index": 0}
            return [*out, self._event("response.reasoning_summary_text.delta", **ids, delta=event.text)]
        if isinstance(event, TextDelta):
            if not event.text:
                return []
            out = []
            if self._open != "message":
                item = {
                    "id": _new_id("msg"),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
                out += self._add("message", item)
                part = {"type": "output_text", "annotations": [], "text": ""}
                item["content"].append(part)
                ids = {"item_id": item["id"], "output_index": len(self.output) - 1, "content_index": 0}
                out.append(self._event("response.content_part.added", **ids, part=dict(part)))
            item = self.output[-1]
            self._growing.add(item["content"][0], "text", event.text)
            ids = {"item_id": item["id"], "output_index": len(self.output) - 1, "content_index": 0}
            return [*out, self._event("response.output_text.delta", **ids, delta=event.text, logprobs=[])]
        if isinstance(event, ToolCallDelta):
            return self._call(event)
        if isinstance(event, Annotation):
            self.annotations.append(event)
            return []
        if isinstance(event, Usage):
            self.usage = event
            return []
        if isinstance(event, Finished):
            return self.finish(event.reason)
        return []

    def _call(self, event: ToolCallDelta) -> list[str]:
        out: list[str] = []
        kind = f"call:{event.index}"
        if event.index not in self._calls:
            item = {
                "id": _new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": event.id or _new_id("call"),
                "name": event.name or "",
            }
            out += self._add(kind, item)
            self._calls[event.index] = len(self.output) - 1
        index = self._calls[event.index]
        self._growing.add(self.output[index], "arguments", event.arguments)
        if event.arguments and self._open == kind:
            item_id = self.output[index]["id"]
            out.append(
                self._event(
                    "response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=event.arguments
                )
            )
        return out

    def finish(self, reason: str = "stop") -> list[str]:
        if self.finished:
            return []
        self.finished = True
        out = self._close()
        self.completed_at = int(time.time())
        if reason == "length":
            self.status = "incomplete"
            self.incomplete = {"reason": "max_output_tokens"}
        else:
            self.status = "completed"
        return out

    def error(self, err: ApiError) -> list[str]:
        """An ``error`` event, then ``response.failed``."""
        self.finished = True
        self.status = "failed"
        code = error_code(err)
        self.error_info = {"code": code, "message": err.message}
        return [
            self._event("error", code=err.code or code, message=err.message, param=err.param),
            self._event("response.failed", response=self.response()),
        ]

    def interrupted(self) -> dict[str, Any]:
        """The object of an answer that stopped before its end (the client left)."""
        if not self.finished:
            self.status = "incomplete"
            self.incomplete = {"reason": "interrupted"}
        return self.response()

    def close(self) -> list[str]:
        """``response.completed`` (or ``.incomplete``), once the answer is saved: a client's
        next turn may follow it at once. A failed answer ended with ``response.failed``."""
        if self.status in ("completed", "incomplete"):
            return [self._event(f"response.{self.status}", response=self.response())]
        return []


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(item))
