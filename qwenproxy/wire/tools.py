"""OpenAI tool calling over a text-only upstream (Qwen web), by prompting and parsing.

Qwen web ignores OpenAI ``tools`` (spec §3.5), so, as peers do (§8), the model is told
the tools and a reply format, ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``,
and its streamed text is watched for such blocks, which become ``ToolCallDelta`` events
and ``finish_reason: "tool_calls"``. Flask-free; it knows nothing of Qwen either:

- ``ToolSpec``: the request's ``tools``/``tool_choice``, validated.
- ``fold_turn`` (``fold_turn_parts``): the text sent upstream for a turn: the instructions, then the new
  messages, where earlier ``assistant.tool_calls`` and ``role:"tool"`` results are written
  out as text (the upstream keeps its own history, so only the new part goes up).
- ``CallParser``: incremental; holds back text that may start a call, releases it as
  content when it is not one. Calls wrapped in prose or in a code fence are found; a
  malformed call (bad JSON, unknown tool) is plain content, never an error.
- ``ToolCallFilter``: wraps a provider's event iterator with the parser, and, for
  ``tool_choice: "required"``, asks once more when the answer had no call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..content import is_text_part, json_text, prefixed, text_of
from ..errors import BadRequest
from ..events import Event, EventFilter, Finished, ResponseStarted, TextDelta, ToolCallDelta, Usage

log = logging.getLogger(__name__)

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
FENCE = "```"
_OPEN_RE = re.compile(re.escape(OPEN_TAG), re.IGNORECASE)
_CLOSE_RE = re.compile(re.escape(CLOSE_TAG[:-1]) + r"\s*>", re.IGNORECASE)
_RESPONSE_RE = re.compile(r"<tool_response>", re.IGNORECASE)  # a hallucinated result: cut
_FENCE_LANGS = {"", "json", "jsonc", "json5", "tool_call", "tool_code", "xml"}
_FIRST_KEY_RE = re.compile(r'\{\s*"([^"\\]{0,40})"')
_CALL_KEYS = {"name", "function", "tool", "tool_name", "type", "id", "arguments", "parameters"}
MAX_HELD = 1024 * 1024  # a call may carry a whole file; beyond this it is not a call
ARGUMENT_PIECE = 48  # characters of arguments per streamed tool_calls delta

RETRY_PROMPT = (
    f"You must call a tool now. Reply with only the {OPEN_TAG} block(s), in the format given above, and no other text."
)


# --------------------------------------------------------------------------- request side


@dataclass
class ToolSpec:
    """The tools of a request and how the model may use them."""

    tools: list[dict[str, Any]] = field(default_factory=list)  # the ``function`` objects
    choice: str = "auto"  # auto | none | required | function
    forced: str | None = None  # the function name tool_choice names
    parallel: bool = True

    @classmethod
    def parse(cls, tools: Any, tool_choice: Any = None, parallel: Any = None) -> ToolSpec:
        """Validate OpenAI ``tools``/``tool_choice`` (400 on anything malformed)."""
        functions: list[dict[str, Any]] = []
        if tools is not None:
            if not isinstance(tools, list):
                raise BadRequest("`tools` must be an array", param="tools")
            for i, tool in enumerate(tools):
                fn = tool.get("function") if isinstance(tool, dict) else None
                if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
                    raise BadRequest(f"tools[{i}] must be a function tool", param=f"tools[{i}]")
                name = fn.get("name")
                if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", name):
                    param = f"tools[{i}].function.name"
                    raise BadRequest(f"{param} is missing or invalid", param=param)
                functions.append(fn)
        spec = cls(tools=functions, parallel=parallel is not False)
        choice = tool_choice
        if isinstance(choice, dict):
            fn = choice.get("function") if choice.get("type", "function") == "function" else None
            name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
            if not isinstance(name, str):
                raise BadRequest("`tool_choice` must name a function", param="tool_choice")
            if name not in spec.names():
                raise BadRequest(f"`tool_choice` names {name!r}, which is not in `tools`", param="tool_choice")
            spec.choice, spec.forced = "function", name
        elif choice is None:
            spec.choice = "auto"
        elif choice in ("auto", "none", "required"):
            spec.choice = choice
        else:
            raise BadRequest("`tool_choice` must be none, auto, required or a named function", param="tool_choice")
        if spec.choice in ("required", "function") and not functions:
            raise BadRequest("`tool_choice` requires `tools`", param="tool_choice")
        return spec

    def names(self) -> list[str]:
        return [str(fn["name"]) for fn in self.tools]

    @property
    def active(self) -> bool:
        """Whether the model is told about tools and its answer parsed for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def required(self) -> bool:
        return self.active and self.choice in ("required", "function")

    def instructions(self) -> str:
        """The tool prompt that goes before the user's text."""
        lines = [
            "# Tools",
            "",
            "You can call the following functions. Each is described as JSON Schema:",
            "<tools>",
        ]
        for fn in self.tools:
            described = {"name": fn["name"], "description": fn.get("description", "")}
            described["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
            lines.append(json.dumps(described, ensure_ascii=False))
        lines += [
            "</tools>",
            "",
            "To call a function, reply with a block in exactly this form, one block per call:",
            OPEN_TAG,
            '{"name": "<function name>", "arguments": {<the arguments as a JSON object>}}',
            CLOSE_TAG,
            "",
            "Rules:",
            "- The arguments must be valid JSON that follows the function's parameters.",
            "- Do not wrap the block in a code fence and do not explain it; the call is made for you.",
            "- The result comes back to you in a <tool_response> block in the next message. "
            "Never write <tool_response> yourself and never guess a result.",
        ]
        if not self.parallel:
            lines.append("- Call at most one function per reply.")
        else:
            lines.append("- To call several functions at once, write several blocks.")
        if self.choice == "function":
            lines.append(f"- In this reply you must call the function `{self.forced}`.")
        elif self.choice == "required":
            lines.append("- In this reply you must call at least one function.")
        else:
            lines.append(f"- When no function is needed, answer normally, without any {OPEN_TAG} block.")
        return "\n".join(lines)


def _text(content: Any) -> str:
    return text_of(content, other=json_text)


def render_call(call: dict[str, Any]) -> str:
    """An earlier ``assistant.tool_calls`` item written as the model was told to write it."""
    fn = call.get("function") or {}
    args: Any = fn.get("arguments") or "{}"
    if isinstance(args, str):
        with contextlib.suppress(ValueError):
            args = json.loads(args)
    body = json.dumps({"name": fn.get("name", ""), "arguments": args}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


def _render(message: dict[str, Any], names: dict[str, str]) -> str:
    role = message.get("role")
    text = _text(message.get("content"))
    if role == "assistant":
        calls = message.get("tool_calls") or []
        if message.get("function_call"):  # legacy single call
            calls = [*calls, {"function": message["function_call"]}]
        for call in calls:
            if isinstance(call, dict):
                names[str(call.get("id", ""))] = str((call.get("function") or {}).get("name", ""))
        parts = [text] if text.strip() else []
        parts += [render_call(c) for c in calls if isinstance(c, dict)]
        return "[assistant]\n" + "\n".join(parts)
    if role in ("tool", "function"):
        call_id = str(message.get("tool_call_id") or "")
        name = message.get("name") or names.get(call_id) or "the function"
        head = f"Result of {name}" + (f" (call {call_id})" if call_id else "") + ":"
        return f"{head}\n<tool_response>\n{text}\n</tool_response>"
    return f"[{role}]\n{text}"


def fold_turn(messages: list[dict[str, Any]], spec: ToolSpec, *, continuing: bool) -> tuple[Any, str | None]:
    """The user content sent upstream for this turn (the tool prompt, then the turn), and
    the first system message; ``fold_turn_parts`` keeps the two apart."""
    prompt, content, system = fold_turn_parts(messages, spec, continuing=continuing)
    return with_tool_prompt(content, prompt), system


def with_tool_prompt(content: Any, prompt: str) -> Any:
    """``content`` (a string or parts) with the tool prompt in front of its text."""
    return prefixed(content, f"{prompt}\n\n") if prompt else content


def fold_turn_parts(messages: list[dict[str, Any]], spec: ToolSpec, *, continuing: bool) -> tuple[str, Any, str | None]:
    """The tool prompt, the user content of this turn without it, and the first system
    message. Apart, because the prompt is the same on every turn of an agent loop and may
    be long (a coding agent's tools): it can go up as one document, used again each turn.

    ``continuing``: the upstream already holds the conversation up to the last assistant
    message, so only what follows it is sent; otherwise everything from the last user
    message on (the agent loop of the current task) is written out. Image parts of the
    last user message are kept (the content is then an array of parts).
    """
    system: str | None = None
    for message in messages:
        if message.get("role") in ("system", "developer"):
            system = _text(message.get("content"))
            break
    convo = [m for m in messages if m.get("role") not in ("system", "developer")]
    # the task starts at the last user message; one right after tool results (Claude Code's
    # reminders, a user's note beside the results) continues that task instead
    last_user = max(
        (
            i
            for i, m in enumerate(convo)
            if m.get("role") == "user" and not (i and convo[i - 1].get("role") in ("tool", "function"))
        ),
        default=0,
    )
    start = last_user
    if continuing:
        last_assistant = max((i for i, m in enumerate(convo) if m.get("role") == "assistant"), default=-1)
        if 0 <= last_assistant < len(convo) - 1:
            start = last_assistant + 1
    names: dict[str, str] = {}
    for message in convo[:start]:
        _render(message, names)  # learn the names of earlier calls
    segment = convo[start:]
    head = spec.instructions() if spec.active else ""
    if len(segment) == 1 and segment[0].get("role") == "user":
        body = _text(segment[0].get("content"))
    else:
        body = "\n\n".join(_render(m, names) for m in segment)
        if segment and segment[-1].get("role") in ("tool", "function"):
            body += "\n\nContinue: use the results above to answer, or call another function."
    # keep the images/files of the last user message
    user_content = next((m.get("content") for m in reversed(segment) if m.get("role") == "user"), None)
    if isinstance(user_content, list):
        others = [p for p in user_content if isinstance(p, dict) and not is_text_part(p)]
        if others:
            return head, [{"type": "text", "text": body}, *others], system
    return head, body, system


def engaged(messages: list[dict[str, Any]], spec: ToolSpec) -> bool:
    """Whether a turn needs ``fold_turn``: tools offered, or tool traffic in the messages."""
    return spec.active or any(
        m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call") for m in messages
    )


# --------------------------------------------------------------------------- answer side


class _JsonEnd:
    """Finds where the JSON object/array at the start of a growing text ends (brackets
    balanced outside strings), resuming where the last look stopped."""

    def __init__(self) -> None:
        self.pos = 0
        self.depth = 0
        self.in_string = self.escaped = False

    def scan(self, text: str) -> int | None:
        for i in range(self.pos, len(text)):
            ch = text[i]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        self.pos = len(text)
        return None


def _strip_fence(text: str) -> str:
    text = text.strip()
    if text.startswith(FENCE):
        first, _, rest = text.partition("\n")
        if first[3:].strip().lower() in _FENCE_LANGS:
            text = rest
        if text.rstrip().endswith(FENCE):
            text = text.rstrip()[:-3]
    return text.strip()


class CallParser:
    """Finds tool calls in streamed answer text; see the module docstring."""

    def __init__(self, spec: ToolSpec) -> None:
        self.spec = spec
        self._names = {n.lower(): n for n in spec.names()}
        self.buf = ""
        self.state = "text"  # text | tag | fence | code | bare
        self._mark = 0  # how far the current state looked without finding its end
        self._json = _JsonEnd()
        self.calls = 0
        self.prose = False  # non-blank content released since the start or the last call
        self.after: list[str] = []  # text after a call: sent at the end, if not blank
        self.cut = False  # a hallucinated <tool_response>: the rest is dropped

    # --- public
    def feed(self, text: str) -> list[Event]:
        if self.cut:
            return []
        self.buf += text
        return self._scan(final=False)

    def finish(self) -> list[Event]:
        out = [] if self.cut else self._scan(final=True)
        tail = "".join(self.after)
        self.after = []
        if tail.strip():
            out.append(TextDelta(tail.rstrip() if self.calls else tail))
        return out

    # --- scanning
    def _scan(self, final: bool) -> list[Event]:
        out: list[Event] = []
        while self.buf:
            before = (self.state, len(self.buf))
            out.extend(getattr(self, "_" + self.state)(final))
            if self.cut or (self.state, len(self.buf)) == before:
                break
        return out

    def _enter(self, state: str) -> None:
        self.state, self._mark, self._json = state, 0, _JsonEnd()

    def _release(self, text: str) -> list[Event]:
        if not text:
            return []
        if self.calls:
            after = "".join(self.after) + text
            match = _RESPONSE_RE.search(after)
            if match:  # the model goes on to invent the result: drop it and what follows
                after, self.cut, self.buf = after[: match.start()], True, ""
            self.after = [after]
            return []
        if text.strip():
            self.prose = True
        return [TextDelta(text)]

    def _text(self, final: bool) -> list[Event]:
        buf = self.buf
        if not self.prose and buf.lstrip().startswith(("{", "[")):
            self.buf = buf.lstrip()
            self._enter("bare")
            return []
        tag = _OPEN_RE.search(buf)
        fence = buf.find(FENCE)
        starts = [i for i in (tag.start() if tag else -1, fence) if i >= 0]
        if starts:
            at = min(starts)
            before = buf[:at]
            out = self._release(before) if self.prose or before.strip() else []  # blank before a call: dropped
            self.buf = buf[at:]
            self._enter("tag" if tag and at == tag.start() else "fence")
            return out
        if final:
            self.buf = ""
            return self._release(buf)
        if not self.prose and not buf.strip():
            return []  # blank so far: a bare call may still begin
        hold = 0
        for marker in (OPEN_TAG, FENCE):
            for k in range(min(len(marker) - 1, len(buf)), 0, -1):
                if marker.startswith(buf[-k:].lower()):
                    hold = max(hold, k)
                    break
        if not self.prose and not buf[: len(buf) - hold].strip():
            return []  # still blank before a possible call
        self.buf = buf[len(buf) - hold :]
        return self._release(buf[: len(buf) - hold])

    def _tag(self, final: bool) -> list[Event]:
        opener = _OPEN_RE.match(self.buf)
        assert opener is not None
        body_start = opener.end()
        since = max(body_start, self._mark - 16)
        close = _CLOSE_RE.search(self.buf, since)
        nxt = _OPEN_RE.search(self.buf, since)
        if close and not (nxt and nxt.start() < close.start()):
            end, body = close.end(), self.buf[body_start : close.start()]
        elif nxt or final:  # unclosed: the body runs to the next call or the end
            end = nxt.start() if nxt else len(self.buf)
            body = self.buf[body_start:end]
        elif len(self.buf) > MAX_HELD:
            return self._give_up()
        else:
            self._mark = len(self.buf)
            return []
        raw, self.buf = self.buf[:end], self.buf[end:]
        self._enter("text")
        return self._calls(body, raw)

    def _fence(self, final: bool) -> list[Event]:
        newline = self.buf.find("\n", 0, 64)
        if not self._mark:  # is it a fence a call may be in? (``_mark``: where its body starts)
            if newline < 0:
                if final or len(self.buf) > 40:
                    return self._to_code()
                return []
            lang = self.buf[3:newline].strip().lower()
            inside = self.buf[newline + 1 : newline + 256].lstrip()
            if lang not in _FENCE_LANGS or (inside and inside[0] not in "{[<"):
                return self._to_code()
            if not inside and not final:
                return []
            self._mark = newline + 1
        close = self.buf.find(FENCE, max(newline + 1, self._mark - 2))
        if close < 0:
            if final:
                raw, self.buf = self.buf, ""
                self._enter("text")
                return self._calls(raw[newline + 1 :], raw)
            if len(self.buf) > MAX_HELD:
                return self._give_up()
            self._mark = len(self.buf)
            return []
        raw, self.buf = self.buf[: close + 3], self.buf[close + 3 :]
        self._enter("text")
        return self._calls(raw[newline + 1 : close], raw)

    def _to_code(self) -> list[Event]:
        """A fence that is not a call: release it and its content untouched."""
        self._enter("code")
        newline = self.buf.find("\n")
        cut = newline + 1 if newline >= 0 else len(self.buf)
        head, self.buf = self.buf[:cut], self.buf[cut:]
        return self._release(head)

    def _code(self, final: bool) -> list[Event]:
        close = self.buf.find(FENCE)
        if close >= 0:
            text, self.buf = self.buf[: close + 3], self.buf[close + 3 :]
            self._enter("text")
            return self._release(text)
        keep = 0 if final else len(self.buf) - len(self.buf.rstrip("`"))
        text, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
        return self._release(text)

    def _bare(self, final: bool) -> list[Event]:
        """An answer that starts with ``{`` (or ``[{``): a call without its tags, or JSON."""
        if not self._mark:  # does it look like a call? (``_mark`` set once it does)
            obj = self.buf[1:256].lstrip() if self.buf.startswith("[") else self.buf[:256]
            if not obj:
                return self._not_bare() if final else []
            if not obj.startswith("{"):
                return self._not_bare()
            first = _FIRST_KEY_RE.match(obj)
            if first is None and (len(obj) > 48 or final):
                return self._not_bare()
            if first is not None and first.group(1) not in _CALL_KEYS:
                return self._not_bare()
            if first is None:
                return []
            self._mark = 1
        end = self._json.scan(self.buf)
        if end is None:
            if final:
                return self._not_bare()
            if len(self.buf) > MAX_HELD:
                return self._give_up()
            return []
        raw, self.buf = self.buf[:end], self.buf[end:]
        self._enter("text")
        return self._calls(raw, raw)

    def _not_bare(self) -> list[Event]:
        self.prose = True  # JSON as an answer: no longer at the start
        self._enter("text")
        return []

    def _give_up(self) -> list[Event]:
        raw, self.buf = self.buf, ""
        self._enter("text")
        self.prose = True
        return self._release(raw)

    # --- calls
    def _calls(self, body: str, raw: str) -> list[Event]:
        """Tool-call events for a block, or its raw text as content when malformed."""
        parsed = self.parse_calls(body)
        if parsed is None:
            log.info("a tool call could not be parsed; it is sent as content")
            self.prose = True
            return self._release(raw)
        out: list[Event] = []
        for name, arguments in parsed:
            if self.calls and not self.spec.parallel:
                break
            index, self.calls = self.calls, self.calls + 1
            out.append(ToolCallDelta(index=index, id=f"call_{uuid.uuid4().hex[:24]}", name=name, arguments=""))
            for i in range(0, len(arguments), ARGUMENT_PIECE):
                out.append(ToolCallDelta(index=index, arguments=arguments[i : i + ARGUMENT_PIECE]))
        self.prose = False
        return out

    def parse_calls(self, body: str) -> list[tuple[str, str]] | None:
        """``[(name, arguments JSON)]`` for a block's body, or ``None`` if it is not a call."""
        body = _strip_fence(body)
        if _OPEN_RE.search(body):  # a fence around tagged calls
            out: list[tuple[str, str]] = []
            for piece in _OPEN_RE.split(body)[1:]:
                calls = self.parse_calls(_CLOSE_RE.split(piece)[0])
                if calls is None:
                    return None
                out += calls
            return out or None
        try:
            value, end = json.JSONDecoder().raw_decode(body)
        except ValueError:
            return None
        if body[end:].strip():
            return None
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            call = self._one(item)
            if call is None:
                return None
            out.append(call)
        return out or None

    def _one(self, item: Any) -> tuple[str, str] | None:
        if not isinstance(item, dict):
            return None
        fn = item.get("function") if isinstance(item.get("function"), dict) else item
        name = fn.get("name") or item.get("tool_name") or item.get("tool")
        if not isinstance(name, str) or name.lower() not in self._names:
            return None
        args: Any = None
        for key in ("arguments", "parameters", "args", "input"):
            if key in fn:
                args = fn[key]
                break
        if args is None:
            args = {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return self._names[name.lower()], json.dumps(args, ensure_ascii=False)


class ToolCallFilter(EventFilter):
    """A provider's events with tool calls parsed out of the answer text.

    ``retry(started)`` opens a follow-up answer in the same conversation; it is used once,
    for ``tool_choice: "required"`` (or a named function) when the answer had no call.
    Until that is decided nothing but ``ResponseStarted`` is passed on.
    """

    def __init__(
        self,
        events: Iterable[Event],
        spec: ToolSpec,
        retry: Callable[[ResponseStarted | None], Iterable[Event]] | None = None,
    ) -> None:
        self.spec = spec
        self.retry = retry if spec.required else None
        self._iter = self._run(events)

    def _run(self, events: Iterable[Event]) -> Iterator[Event]:
        parser = CallParser(self.spec)
        held: list[Event] | None = [] if self.retry else None
        started: ResponseStarted | None = None
        for event in self._parse(events, parser):
            if isinstance(event, ResponseStarted):
                started = event
                yield event
            elif held is None:
                yield event
            elif parser.calls:
                yield from held
                held = None
                yield event
            else:
                held.append(event)
        if held is None or self.retry is None:
            return
        log.info("tool_choice requires a call and none came: asking once more")
        yield from self._parse(self.retry(started), CallParser(self.spec))

    @staticmethod
    def _parse(events: Iterable[Event], parser: CallParser) -> Iterator[Event]:
        pending: list[Event] = []  # usage waits for the end of the text
        for event in events:
            if isinstance(event, TextDelta):
                yield from parser.feed(event.text)
            elif isinstance(event, Usage):
                pending.append(event)
            elif isinstance(event, Finished):
                yield from parser.finish()
                yield from pending
                pending = []
                yield Finished("tool_calls") if parser.calls else event
            else:
                yield event
        yield from parser.finish()
        yield from pending
