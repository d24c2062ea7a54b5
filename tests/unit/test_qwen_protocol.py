"""The Qwen web protocol on recorded byte streams, split at awkward boundaries."""

from __future__ import annotations

import json
import random

import pytest

from qwenproxy.errors import (
    BadRequest,
    Conflict,
    ModelNotFound,
    NotFound,
    RateLimited,
    Unauthorized,
    UpstreamBlocked,
    UpstreamError,
)
from qwenproxy.events import Finished, ReasoningDelta, ResponseStarted, TextDelta, Usage
from qwenproxy.qwen.protocol import (
    SSEDecoder,
    completion_body,
    error_from_response,
    new_chat_body,
    parse_stream,
)


def _usage(n: int) -> dict:
    return {
        "input_tokens": 33,
        "output_tokens": n,
        "characters": 0,
        "total_tokens": 33 + n,
        "input_tokens_details": {"text_tokens": 33},
        "output_tokens_details": {"text_tokens": n},
        "cached_tokens": 0,
    }


def recorded_stream(pieces: list[str]) -> bytes:
    """A stream shaped like the Oct 2025 capture (spec §4.3), spacing quirks included."""
    lines = [
        'data: {"response.created":{"chat_id": "0cac4f88-1", "parent_id": "f2a0176c-2", "response_id":"e34734e7-3"}} '
    ]
    for i, piece in enumerate(pieces, 1):
        delta = {
            "choices": [{"delta": {"role": "assistant", "content": piece, "phase": "answer", "status": "typing"}}],
            "usage": _usage(i),
        }
        lines.append("data: " + json.dumps(delta, ensure_ascii=False))
    lines.append(
        'data: {"choices": [{"delta": {"role": "assistant", "content": "", "phase": "answer", "status": "typing"}}], '
        '"usage": ' + json.dumps(_usage(len(pieces))) + "}"
    )
    lines.append(
        'data: {"choices": [{"delta": {"content": "", "role": "assistant", "status": "finished", "phase": "answer"}}]}'
    )
    return ("\n\n".join(lines) + "\n\n").encode("utf-8")


PIECES = ["Привет", ", ", "мир", " 🌍", "! Greetings", ", alien."]
ANSWER = "".join(PIECES)


def _events(raw: bytes, cuts: list[int]) -> list:
    chunks, last = [], 0
    for cut in sorted(set(cuts)):
        chunks.append(raw[last:cut])
        last = cut
    chunks.append(raw[last:])
    return list(parse_stream(iter(chunks)))


def _check(events: list) -> None:
    assert events[0] == ResponseStarted("0cac4f88-1", "f2a0176c-2", "e34734e7-3")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
    usage = [e for e in events if isinstance(e, Usage)]
    assert len(usage) == 1, "cumulative usage is reported once, the last value"
    assert (usage[0].prompt_tokens, usage[0].completion_tokens, usage[0].total_tokens) == (33, 6, 39)
    assert usage[0].raw["input_tokens_details"] == {"text_tokens": 33}
    assert events[-1] == Finished("stop")


def test_whole_stream_in_one_chunk() -> None:
    _check(_events(recorded_stream(PIECES), []))


def test_every_single_byte_boundary() -> None:
    raw = recorded_stream(PIECES)
    for cut in range(1, len(raw)):
        _check(_events(raw, [cut]))


def test_byte_by_byte_splits_utf8_characters() -> None:
    raw = recorded_stream(PIECES)
    assert "Привет".encode() in raw and "🌍".encode() in raw
    _check(_events(raw, list(range(1, len(raw)))))


def test_random_multi_splits_with_crlf_and_comments() -> None:
    raw = recorded_stream(PIECES).replace(b"\n", b"\r\n")
    raw = b": keepalive\r\n\r\n" + raw
    rng = random.Random(7)
    for _ in range(200):
        cuts = [rng.randrange(1, len(raw)) for _ in range(rng.randrange(1, 40))]
        _check(_events(raw, cuts))


def test_events_are_yielded_before_the_stream_ends() -> None:
    raw = recorded_stream(PIECES)
    first_event_end = raw.index(b"\n\n") + 2

    def chunks():
        yield raw[:first_event_end]
        raise AssertionError("the parser read past the first event before yielding it")

    events = parse_stream(chunks())
    assert isinstance(next(events), ResponseStarted)


def test_done_terminator_and_non_json_lines_are_tolerated() -> None:
    raw = recorded_stream(PIECES).replace(b'"status": "finished"', b'"status": "typing"')
    raw = b"data: not json\n\n" + raw + b"data: [DONE]\n\n"
    events = list(parse_stream([raw]))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
    assert events[-1] == Finished("stop")


def test_truncated_stream_raises_after_the_text() -> None:
    raw = recorded_stream(PIECES)
    raw = raw[: raw.index(b'"status": "finished"') - 40]
    seen = []
    with pytest.raises(UpstreamError) as exc:
        for event in parse_stream([raw]):
            seen.append(event)
    assert exc.value.code == "upstream_truncated"
    assert any(isinstance(e, TextDelta) for e in seen)


def test_in_stream_error_is_typed() -> None:
    raw = recorded_stream(PIECES[:2]).split(b"\n\n")[0] + b"\n\n"
    raw += b'data: {"error": {"code": "RateLimited", "details": "limit", "num": 3}}\n\n'
    with pytest.raises(RateLimited) as exc:
        list(parse_stream([raw]))
    assert exc.value.retry_after == 3 * 3600


def test_thinking_phases_are_reasoning_not_content() -> None:
    created = b'data: {"response.created":{"chat_id":"c","parent_id":"p","response_id":"r"}}\n\n'

    def delta(**d) -> bytes:
        return b"data: " + json.dumps({"choices": [{"delta": {"role": "assistant", **d}}]}).encode() + b"\n\n"

    raw = (
        created
        + delta(content="Let me think", phase="think", status="typing")
        + delta(content="", phase="think", status="finished")
        + delta(
            content="",
            phase="thinking_summary",
            status="typing",
            extra={"summary_thought": {"content": ["First idea"]}},
        )
        + delta(
            content="",
            phase="thinking_summary",
            status="typing",
            extra={"summary_thought": {"content": ["First idea", "Second idea"]}},
        )
        + delta(content="Answer", phase="answer", status="typing")
        + delta(content="", phase="answer", status="finished")
    )
    events = list(parse_stream([raw]))
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert reasoning == "Let me think\n\nFirst idea\n\nSecond idea"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Answer"


def test_parallel_answer_is_ignored() -> None:
    raw = (
        b'data: {"response.created":{"chat_id":"c","parent_id":"p","response_id":"r0","response_index":"0"}}\n\n'
        b'data: {"response.created":{"chat_id":"c","parent_id":"p","response_id":"r1","response_index":"1"}}\n\n'
        b'data: {"choices":[{"delta":{"role":"assistant","content":"A","phase":"answer","status":"typing"}}],'
        b'"response_id":"r0"}\n\n'
        b'data: {"choices":[{"delta":{"role":"assistant","content":"B","phase":"answer","status":"typing"}}],'
        b'"response_id":"r1"}\n\n'
        b'data: {"choices":[{"delta":{"content":"","role":"assistant","status":"finished","phase":"answer"}}],'
        b'"response_id":"r0"}\n\n'
    )
    events = list(parse_stream([raw]))
    assert events[0].response_id == "r0"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["A"]


def test_sse_decoder_joins_multiline_data_and_handles_lone_cr() -> None:
    decoder = SSEDecoder()
    out = decoder.feed(b"data: a\r")
    out += decoder.feed(b"\ndata: b\r\n\r")
    out += decoder.feed(b"\n")
    assert out == ["a\nb"]


ENV = {"content-type": "application/json"}


def envelope(code: str, details: str, **extra) -> bytes:
    return json.dumps(
        {"success": False, "request_id": "x", "data": {"code": code, "details": details, **extra}}
    ).encode()


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind", "code"),
    [
        (
            envelope(
                "RateLimited",
                "You've reached the upper limit for today's usage.",
                num=19,
                template="Please wait {{num}} hours",
            ),
            ENV,
            200,
            RateLimited,
            "rate_limited",
        ),
        (
            envelope("unauthorized", "Token has expired, please log in again."),
            ENV,
            200,
            Unauthorized,
            "upstream_unauthorized",
        ),
        (envelope("Unauthorized", "Token has expired"), ENV, 200, Unauthorized, "upstream_unauthorized"),
        (envelope("Bad_Request", "The chat is in progress!"), ENV, 200, Conflict, "chat_in_progress"),
        (envelope("Bad_Request", "Invalid input too many messages."), ENV, 200, UpstreamError, "upstream_bad_request"),
        (envelope("Not_Found", "Model not found"), ENV, 200, ModelNotFound, "model_not_found"),
        (envelope("Not_Found", "Chat not found"), ENV, 200, NotFound, "upstream_not_found"),
        (
            json.dumps(
                {
                    "ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试"],
                    "data": {"url": "https://chat.qwen.ai:443//punish?x5secdata=1"},
                }
            ).encode(),
            ENV,
            200,
            UpstreamBlocked,
            "upstream_blocked",
        ),
        (
            b'<!doctypehtml><html><head><meta name="aliyun_waf_aa" content="1"></head></html>',
            {"content-type": "text/html"},
            200,
            UpstreamBlocked,
            "upstream_blocked",
        ),
        (  # 2026 §4: the "new anti-spam system" is a wall too
            b'{"success":false,"code":404,"message":"Not Found"}',
            {"content-type": "application/json", "x-actual-status-code": "404"},
            200,
            UpstreamBlocked,
            "upstream_blocked",
        ),
        (
            b'{"success":false,"code":403,"message":"Forbidden"}',
            {"content-type": "application/json", "x-actual-status-code": "403"},
            200,
            UpstreamBlocked,
            "upstream_blocked",
        ),
        (
            b'{"success":false}',
            {"content-type": "application/json", "x-actual-status-code": "500"},
            200,
            UpstreamError,
            "upstream_status",
        ),
        (
            envelope("invalid_input", "The value of the enable_thinking parameter is restricted to True."),
            ENV,
            200,
            BadRequest,
            "upstream_invalid_input",
        ),
        (b"", {}, 401, Unauthorized, "upstream_unauthorized"),
        (b"", {}, 429, RateLimited, "rate_limited"),
        (b"<html>504 Gateway Time-out</html>", {"content-type": "text/html"}, 504, UpstreamError, "upstream_html"),
    ],
)
def test_error_envelopes_become_typed_errors(body, headers, status, kind, code) -> None:
    err = error_from_response(status, headers, body)
    assert type(err) is kind
    assert err.code == code


def test_rate_limit_reads_num_hours_from_data() -> None:
    err = error_from_response(200, ENV, envelope("RateLimited", "limit", num=19))
    assert err.retry_after == 19 * 3600
    assert err.headers["Retry-After"] == str(19 * 3600)


def test_success_is_not_an_error() -> None:
    assert error_from_response(200, ENV, b'{"success":true,"request_id":"r","data":{"id":"c"}}') is None


def test_bodies_follow_the_2026_front_end() -> None:
    chat = new_chat_body("qwen3.7-max", now=1761484022.218)
    assert chat == {  # 2026 §2: no title, chat_mode normal, ms timestamp
        "chatId": "",
        "models": ["qwen3.7-max"],
        "project_id": "",
        "timestamp": 1761484022218,
        "chat_type": "t2t",
        "chat_mode": "normal",
    }
    body = completion_body(
        chat_id="c1", model="qwen3.7-max", content="hi", parent_id="r0", system="be brief", now=1761490228.5
    )
    assert body["version"] == "2.1"
    assert body["chat_id"] == body["chatId"] == "c1" and body["parent_id"] == body["parentId"] == "r0"
    assert body["timestamp"] == 1761490228500 and body["chat_mode"] == "normal"
    assert body["stream"] is True and body["incremental_output"] is True and body["system_message"] == "be brief"
    (message,) = body["messages"]
    assert message["id"] is None and message["parentId"] == message["parent_id"] == "r0"
    assert message["role"] == "user" and message["content"] == "hi" and message["files"] == []
    assert message["user_action"] == "chat" and message["timestamp"] == 1761490228
    assert message["models"] == ["qwen3.7-max"] and message["model"] == "qwen3.7-max"
    assert message["feature_config"] == {
        "thinking_enabled": False,
        "thinking_mode": "Fast",
        "thinking_format": "summary",
        "research_mode": "normal",
        "auto_thinking": False,
        "auto_search": False,
        "output_schema": "phase",
    }
    assert message["chat_type"] == message["sub_chat_type"] == "t2t"
    assert message["extra"] == {"meta": {"subChatType": "t2t"}}
    thinking = completion_body(chat_id="c1", model="m", content="x", feature_config={"thinking_enabled": True})
    assert thinking["messages"][0]["feature_config"]["thinking_mode"] == "Thinking"
    assert thinking["parent_id"] is None and thinking["parentId"] is None


def test_the_fakes_2026_body_check_accepts_our_body() -> None:
    """The fake's strict check (tests/fakes) and our builder agree field by field."""
    from tests.fakes.qwen_web import FakeQwen

    fake = FakeQwen()
    for parent in (None, "r0"):
        body = completion_body(chat_id="c1", model="qwen3.7-max", content="hi", parent_id=parent)
        assert fake._check_2026_completion(body, body["messages"][0]) is None
