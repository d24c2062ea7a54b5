"""OpenAI ``response_format`` (JSON mode, structured outputs) over upstreams that only write text.

None of the upstreams constrains its decoding to a schema, so, as with tools (``wire/tools.py``),
the model is told what to write and its answer is checked. Flask-free, upstream-free:

- ``ResponseFormat.parse``: the request's ``response_format``, validated (400 on anything
  malformed: an unknown ``type``, a ``schema`` that is not a JSON Schema).
- ``ResponseFormat.instructed``: the messages with the JSON instructions (and the schema) added
  to the system message; ``repair_prompt``: the second turn after an invalid answer.
- ``ResponseFormat.check``: the JSON in an answer (code fences and prose around it removed),
  parsed and validated with ``jsonschema``.
- ``StructuredFilter``: a provider's events with the answer held back until it is checked; an
  invalid answer gets one repair round (``retry``); then the JSON alone goes out as the content,
  or, with ``strict: true``, an ``InvalidStructuredOutput`` error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jsonschema import exceptions as schema_exceptions
from jsonschema import validators
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from ..errors import BadRequest, UpstreamError
from ..events import Event, EventFilter, Finished, ResponseStarted, TextDelta, ToolCallDelta, Usage, add_usage
from .pieces import joined
from .transcript import strip_think

log = logging.getLogger(__name__)

FORMAT_TYPES = ("text", "json_object", "json_schema")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)```", re.DOTALL)
MAX_STARTS = 64  # positions a JSON value is looked for at, in a long answer
MAX_ERRORS = 5  # validation errors told to the model in the repair round


class InvalidStructuredOutput(UpstreamError):
    """``strict: true`` and the model's answer still does not match after the repair round."""

    code = "invalid_structured_output"


@dataclass(frozen=True)
class Checked:
    """What ``ResponseFormat.check`` found in an answer."""

    json_text: str | None  # the JSON as the model wrote it (None: no JSON value in the answer)
    errors: tuple[str, ...] = ()  # why it does not match ("" never: empty means valid)

    @property
    def ok(self) -> bool:
        return self.json_text is not None and not self.errors

    def rank(self) -> tuple[int, int]:
        """Higher is better: valid, then parsed with fewer errors, then no JSON at all."""
        if self.json_text is None:
            return (0, 0)
        return (2, 0) if not self.errors else (1, -len(self.errors))

    def summary(self) -> str:
        return "; ".join(self.errors)


@dataclass(frozen=True)
class ResponseFormat:
    """A validated ``response_format`` of type ``json_object`` or ``json_schema``."""

    kind: str  # json_object | json_schema
    name: str = ""
    schema: dict[str, Any] | None = None  # None: any JSON (json_object, or json_schema without one)
    strict: bool = False
    description: str = ""

    # --- the request
    @classmethod
    def parse(cls, value: Any, param: str = "response_format") -> ResponseFormat | None:
        """The format a request asks for; ``None`` for plain text (absent or ``{"type": "text"}``)."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise BadRequest(f"`{param}` must be an object", param=param)
        kind = value.get("type")
        if kind not in FORMAT_TYPES:
            raise BadRequest(
                f"`{param}.type` must be one of {list(FORMAT_TYPES)}, not {json.dumps(kind)}", param=f"{param}.type"
            )
        if kind == "text":
            return None
        if kind == "json_object":
            return cls("json_object")
        spec = value.get("json_schema")
        where = f"{param}.json_schema"
        if not isinstance(spec, dict):
            raise BadRequest(f"`{where}` must be an object with `name` and `schema`", param=where)
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise BadRequest(
                f"`{where}.name` must be 1 to 64 letters, digits, underscores or dashes", param=f"{where}.name"
            )
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise BadRequest(f"`{where}.strict` must be a boolean", param=f"{where}.strict")
        description = spec.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequest(f"`{where}.description` must be a string", param=f"{where}.description")
        schema = spec.get("schema")
        if schema is not None:
            check_schema(schema, f"{where}.schema")
        return cls("json_schema", name, schema, bool(strict), description or "")

    # --- what the model is told
    def instructions(self) -> str:
        """The text added to the system message."""
        lines = ["# Response format", ""]
        if self.schema is None:
            lines.append("Answer with a single JSON object.")
        else:
            what = f"`{self.name}`" + (f" ({self.description})" if self.description else "")
            lines += [
                f"Answer with a single JSON value, {what}, that is valid against this JSON Schema:",
                "<json_schema>",
                json.dumps(self.schema, ensure_ascii=False),
                "</json_schema>",
            ]
        lines += [
            "",
            "Rules:",
            "- Reply with the JSON only: no text before or after it, no code fence, no comments.",
            "- It must be valid JSON: double-quoted strings and keys, no trailing commas.",
        ]
        if self.schema is not None:
            lines.append(
                "- Give every required property, use the types and values the schema allows, "
                "and add no property it does not allow."
            )
        return "\n".join(lines)

    def instructed(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` (not changed) with the instructions at the end of the first system
        message, or in a new system message at the start."""
        text = self.instructions()
        out = list(messages)
        for i, message in enumerate(out):
            if message.get("role") in ("system", "developer"):
                out[i] = {**message, "content": _appended(message.get("content"), text)}
                return out
        return [{"role": "system", "content": text}, *out]

    def repair_prompt(self, checked: Checked) -> str:
        """The user turn that asks for a corrected answer."""
        if checked.json_text is None:
            why = "It did not contain a JSON value."
        else:
            why = "It does not match: " + checked.summary() + "."
        what = "the JSON Schema given above" if self.schema is not None else "a single JSON object"
        return (
            f"Your previous answer cannot be used. {why} Reply again with only the corrected JSON, "
            f"valid against {what}: no text before or after it, no code fence."
        )

    # --- the answer
    def check(self, text: str) -> Checked:
        """The best JSON value in ``text`` and what is wrong with it (nothing: valid)."""
        best: Checked | None = None
        for raw, value in json_candidates(text):
            checked = Checked(raw, tuple(self.errors_of(value)))
            if checked.ok:
                return checked
            if best is None or checked.rank() > best.rank():
                best = checked
        return best or Checked(None, ("the answer has no JSON value",))

    def errors_of(self, value: Any) -> list[str]:
        """Why ``value`` does not match (``[]``: it does)."""
        if self.schema is None:
            return [] if isinstance(value, dict) else ["the answer must be a JSON object, not an array"]
        validator = _validator(self.schema)
        try:
            errors = sorted(validator.iter_errors(value), key=lambda e: (len(e.path), list(map(str, e.path))))
        except Unresolvable as exc:  # a reference check_schema let through: not the answer's fault
            log.warning("response_format schema %s has an unresolvable reference: %s", self.name, exc)
            return []
        return [_describe(e) for e in errors[:MAX_ERRORS]]

    def failure(self, checked: Checked) -> InvalidStructuredOutput:
        """The error of a strict format whose answer is still invalid after the repair round."""
        target = f"json_schema `{self.name}`" if self.kind == "json_schema" else "json_object"
        return InvalidStructuredOutput(
            f"The model's answer does not match response_format {target} after one repair round: {checked.summary()}"
        )


def check_schema(schema: Any, param: str) -> None:
    """400 unless ``schema`` is a JSON Schema whose ``$ref``s point inside it."""
    if not isinstance(schema, dict):
        raise BadRequest(f"`{param}` must be a JSON Schema object", param=param)
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except schema_exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise BadRequest(
            f"`{param}` is not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else ""), param=param
        ) from None
    resolver = _registry(schema).resolver()
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise BadRequest(f"`{param}`: only references inside the schema are supported, not {ref!r}", param=param)
        try:
            resolver.lookup(ref)
        except Unresolvable:
            raise BadRequest(f"`{param}`: the reference {ref!r} points nowhere", param=param) from None


def _registry(schema: dict[str, Any]) -> Registry:
    return Registry().with_resource("", Resource.from_contents(schema, default_specification=DRAFT202012))


def _validator(schema: dict[str, Any]) -> Any:
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    return cls(schema, registry=_registry(schema), format_checker=cls.FORMAT_CHECKER)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield value
            elif key not in ("const", "enum", "default", "examples"):
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _describe(error: schema_exceptions.ValidationError) -> str:
    where = error.json_path
    return error.message if where == "$" else f"{where}: {error.message}"


def _appended(content: Any, text: str) -> Any:
    if isinstance(content, list):
        return [*content, {"type": "text", "text": "\n\n" + text}]
    existing = "" if content is None else str(content)
    return f"{existing}\n\n{text}" if existing.strip() else text


def json_candidates(text: str) -> Iterator[tuple[str, Any]]:
    """Each JSON object or array in an answer, as ``(its text, its value)``, most likely first:
    the whole answer, then code fences, then values that start inside prose."""
    body = strip_think(text).strip()
    seen: set[str] = set()

    def attempt(raw: str) -> Iterator[tuple[str, Any]]:
        raw = raw.strip()
        if raw in seen or not raw:
            return
        seen.add(raw)
        try:
            value = json.loads(raw)
        except ValueError:
            return
        if isinstance(value, (dict, list)):
            yield raw, value

    yield from attempt(body)
    for fence in _FENCE_RE.finditer(body):
        yield from attempt(fence.group(2))
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[{\[]", body)][:MAX_STARTS]
    for start in starts:
        try:
            value, end = decoder.raw_decode(body, start)
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            yield from attempt(body[start:end])


# --------------------------------------------------------------------------- the answer stream


Retry = Callable[[ResponseStarted | None, str, Checked], Iterable[Event]]


class StructuredFilter(EventFilter):
    """A provider's events with the answer text held back until it is checked.

    ``ResponseStarted`` goes on at once (so the stream's headers and pings flow), as do
    reasoning, sources and tool calls; the text, usage and the end wait. A valid answer goes
    out as its JSON alone (fences and prose dropped). An invalid one gets one repair round:
    ``retry(started, answer, checked)`` opens the follow-up answer. Still invalid: with
    ``strict`` an ``InvalidStructuredOutput`` is raised, otherwise the better of the two
    answers goes out. An answer that calls tools is passed on unchecked.
    """

    def __init__(self, events: Iterable[Event], fmt: ResponseFormat, retry: Retry | None = None) -> None:
        self.fmt = fmt
        self.retry = retry
        self.rounds = 0
        self._iter = self._run(iter(events))

    def _run(self, events: Iterator[Event]) -> Iterator[Event]:
        # the first event is pulled before anything is yielded: an upstream that fails at once
        # still fails before the response starts (a real HTTP status)
        first = next(events, None)
        if first is None:
            return
        if not isinstance(first, ResponseStarted):
            yield ResponseStarted()
        best: tuple[Checked, str, Finished | None] | None = None
        usage: Usage | None = None
        answer = _Round()
        stream: Iterable[Event] = _chain(first, events)
        while True:
            self.rounds += 1
            answer = _Round()
            for event in stream:
                if isinstance(event, ResponseStarted):
                    answer.started = event
                    yield event
                elif isinstance(event, TextDelta):
                    answer.pieces.append(event.text)
                elif isinstance(event, Usage):
                    answer.usage = event  # cumulative within a round (Qwen): the last one counts
                elif isinstance(event, Finished):
                    answer.finished = event
                else:
                    answer.calls = answer.calls or isinstance(event, ToolCallDelta)
                    yield event
            usage = add_usage(usage, answer.usage)
            if answer.calls:  # a tool call instead of an answer: nothing to check
                yield from _end(answer.text, usage, answer.finished)
                return
            checked = self.fmt.check(answer.text)
            if best is None or checked.rank() >= best[0].rank():
                best = (checked, answer.text, answer.finished)
            if checked.ok or self.retry is None or self.rounds > 1:
                break
            log.info("the answer does not match response_format (%s): one repair round", checked.summary())
            stream = self.retry(answer.started, answer.text, checked)
        checked, text, finished = best
        if not checked.ok:
            if self.fmt.strict:
                raise self.fmt.failure(checked)
            log.info("the answer still does not match response_format; the best one goes out")
        yield from _end(checked.json_text if checked.json_text is not None else text, usage, finished)


@dataclass
class _Round:
    started: ResponseStarted | None = None
    pieces: list[str] = field(default_factory=list)  # joined once: ``str +=`` is quadratic
    usage: Usage | None = None
    finished: Finished | None = None
    calls: bool = False

    @property
    def text(self) -> str:
        return joined(self.pieces)


def _chain(first: Event, rest: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from rest


def _end(text: str, usage: Usage | None, finished: Finished | None) -> Iterator[Event]:
    if text:
        yield TextDelta(text)
    if usage is not None:
        yield usage
    yield finished or Finished("stop")
