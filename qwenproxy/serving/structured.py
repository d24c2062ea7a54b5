"""``response_format`` for every provider: the one place a turn's stream is opened with it.

Flask-free. ``open_stream`` tells the model the format (``wire/structured.py``), and wraps the
provider's events in a ``StructuredFilter`` whose repair round is a second upstream turn: in the
same upstream chat for a provider that keeps the conversation (Qwen web: only the repair prompt,
after the invalid answer), or the whole conversation again with the invalid answer and the
repair prompt appended (GigaChat, the local coder).

Every client API reaches it the same way: chat completions' ``response_format`` and the
Responses API's ``text.format`` (as the same dict) travel in ``ChatRequest.options``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..events import Event, EventStream, ResponseStarted
from ..providers import ChatRequest, Provider
from ..wire.structured import Checked, ResponseFormat, StructuredFilter

OPTION = "response_format"  # the ChatRequest.options key: OpenAI's response_format dict


def open_stream(provider: Provider, request: ChatRequest, response_format: Any = None) -> EventStream:
    """``provider.open_stream(request)``, honouring ``response_format`` (a chat completions
    ``response_format`` dict; default: ``request.options["response_format"]``). A malformed
    one is a ``BadRequest``; without one, or with ``{"type": "text"}``, the stream is the
    provider's own."""
    if response_format is None:
        response_format = request.options.get(OPTION)
    fmt = ResponseFormat.parse(response_format)
    if fmt is None:
        return provider.open_stream(request)
    first = replace(request, messages=fmt.instructed(request.messages))
    inner = provider.open_stream(first)
    outer = EventStream(iter(()), info=inner.info)
    current = {"stream": inner}

    def retry(started: ResponseStarted | None, answer: str, checked: Checked) -> Iterator[Event]:
        again = _repair_request(provider, first, outer.info, started, answer, fmt.repair_prompt(checked), fmt)
        stream = provider.open_stream(again)
        current["stream"] = stream
        yield from stream
        outer.info.update(stream.info)

    def cancel() -> None:  # whichever round is running now
        current["stream"].cancel()

    outer.events = StructuredFilter(inner, fmt, retry)
    outer.on_cancel = cancel
    return outer


def _repair_request(
    provider: Provider,
    first: ChatRequest,
    info: dict[str, Any],
    started: ResponseStarted | None,
    answer: str,
    prompt: str,
    fmt: ResponseFormat,
) -> ChatRequest:
    """The second turn: the repair prompt after the invalid answer."""
    history = [*first.messages, {"role": "assistant", "content": answer}, {"role": "user", "content": prompt}]
    if not provider.server_side_history:
        return replace(first, messages=history)
    upstream_chat = (started.chat_id if started else None) or info.get("upstream_chat_id")
    if upstream_chat and started and started.response_id:
        return replace(
            first,
            messages=fmt.instructed([{"role": "user", "content": prompt}]),
            conversation_id=upstream_chat,
            parent_id=started.response_id,
            account_id=info.get("account_id") or first.account_id,
            upstream_known=None,
        )
    # no upstream ids to continue from: a new upstream chat with everything folded
    return replace(first, messages=history, conversation_id=None, parent_id=None, account_id=None, upstream_known=0)
