"""One legacy completion (``POST /api/completions``): each prompt a chat turn of its own, all
through the one stream loop. The route has validated the request already."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from flask import Response, current_app, g

from ..events import Event, EventStream, Finished, Usage, add_usage
from ..providers import ChatRequest, Provider
from ..wire.completions import Choices, TextCompletionAnswer
from ..wire.openai import CompletionRequest
from .conversations import Turn, open_chat
from .streaming import serve

COMPLETIONS_CHAT_NAME = "OpenAI Completions"


def completion_turn(provider: Provider, req: CompletionRequest) -> Response:
    """Serve a validated legacy completion with ``provider``: every prompt (``n`` times) is a
    user message in a new upstream chat, answered one after the other."""
    upstream_model, model, options = provider.resolve_request(req.model)
    prompts = [p for p in req.prompts for _ in range(req.n)]
    chat, _ = open_chat(None, provider=provider.name, model=model, name=COMPLETIONS_CHAT_NAME)
    base = ChatRequest(
        model=upstream_model,
        messages=[],
        stream=req.stream,
        requested_model=req.model,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stop,
        options=options,
        request_id=getattr(g, "request_id", "") or uuid.uuid4().hex,
    )
    choices = Choices()
    turn = Turn(chat=chat, provider=provider.name, model=model)
    turn.begin([{"role": "user", "content": p} for p in req.prompts])
    answer = TextCompletionAnswer(
        model=model, prompts=prompts, choices=choices, echo=bool(req.echo), include_usage=req.include_usage
    )
    return serve(
        lambda: prompt_stream(provider, base, prompts, choices),
        turn,
        stream=req.stream,
        model=model,
        extras=lambda collected, info: {},  # noqa: ARG005 - no extension fields in this API
        ping_interval=float(current_app.config["PING_INTERVAL"]),
        answer=answer,
    )


def prompt_stream(provider: Provider, base: ChatRequest, prompts: list[str], choices: Choices) -> EventStream:
    """The answers to ``prompts``, one after the other, as one stream: each ends with exactly
    one ``Finished``, and the usage of them all comes once, at the end."""
    first = provider.open_stream(replace(base, messages=[{"role": "user", "content": prompts[0]}]))
    current = {"stream": first}
    out = EventStream(iter(()), info=first.info)

    def events() -> Iterator[Event]:
        usage: Usage | None = None
        for index, prompt in enumerate(prompts):
            stream = first if index == 0 else provider.open_stream(replace(base, messages=[_user(prompt)]))
            current["stream"] = stream
            last: Usage | None = None
            finished = Finished("stop")
            for event in stream:
                choices.add(index, event)
                if isinstance(event, Usage):
                    last = event  # cumulative within one answer (Qwen): the last one counts
                elif isinstance(event, Finished):
                    finished = event
                else:
                    yield event
            usage = add_usage(usage, last)
            choices.add(index, finished)
            yield finished
        if usage is not None:
            yield usage

    def cancel() -> None:  # whichever answer is running now
        current["stream"].cancel()

    out.events = events()
    out.on_cancel = cancel
    return out


def _user(prompt: str) -> dict[str, Any]:
    return {"role": "user", "content": prompt}
