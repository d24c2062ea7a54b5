"""The Anthropic Messages wire module: request conversion, the rendered stream and message
(checked against the official ``anthropic`` SDK's types), errors, model names, token estimate."""

from __future__ import annotations

import json

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from qwenproxy.errors import ApiError, AuthenticationError, BadRequest, NotFound, RateLimited, UpstreamUnavailable
from qwenproxy.events import Finished, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from qwenproxy.wire import anthropic as A
from qwenproxy.wire.openai import collect

STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)


def request(**fields) -> A.MessagesRequest:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    return A.parse(A.MessagesRequest, {**body, **fields})


def parsed(frames: list[str]) -> list[tuple[str, dict]]:
    """``(event name, data)`` of rendered SSE frames; each must be ``event:`` + ``data:``."""
    out = []
    for f in frames:
        assert f.endswith("\n\n")
        head, data = f[:-2].split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        out.append((head[7:], json.loads(data[6:])))
    return out


# --------------------------------------------------------------------------- request


def test_system_blocks_tool_use_and_results_become_openai_messages() -> None:
    req = request(
        system=[
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use tools."},
        ],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "let me see", "signature": "abc"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "5C"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
    )
    conv = A.convert(req)
    assert conv.messages == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "5C"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert conv.tools == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}, "description": "Weather"},
        }
    ]


def test_tool_result_error_string_and_images() -> None:
    png = "iVBORw0KGgo="
    req = request(
        messages=[
            {"role": "user", "content": "look"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
                        ],
                    },
                ],
            },
        ],
        tools=[{"name": "shot", "input_schema": {"type": "object"}}],
    )
    messages = A.convert(req).messages
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: boom"}
    assert messages[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": ""}
    parts = messages[4]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    assert parts[1]["type"] == "text"


def test_images_and_documents() -> None:
    req = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                        "title": "N",
                    },
                    {"type": "text", "text": "Describe"},
                ],
            }
        ]
    )
    assert A.convert(req).messages[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "document.pdf"}},
        {"type": "text", "text": "N\nnotes"},
        {"type": "text", "text": "Describe"},
    ]


def test_tool_choice_thinking_and_sampling_map_to_chat_fields() -> None:
    tools = [{"name": "a", "input_schema": {"type": "object"}}]
    conv = A.convert(
        request(
            tools=tools,
            tool_choice={"type": "tool", "name": "a", "disable_parallel_tool_use": True},
            thinking={"type": "enabled", "budget_tokens": 2048},
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.9,
            top_k=40,
        )
    )
    assert conv.tool_choice == {"type": "function", "function": {"name": "a"}}
    assert conv.options == {"thinking": True, "thinking_budget": 2048, "parallel_tool_calls": False, "top_k": 40}
    assert (conv.stop, conv.max_tokens, conv.temperature, conv.top_p) == (["END"], 1024, 0.2, 0.9)
    assert A.convert(request(tools=tools, tool_choice={"type": "any"})).tool_choice == "required"
    assert A.convert(request(tools=tools, tool_choice={"type": "none"})).tool_choice == "none"
    assert A.convert(request(thinking={"type": "disabled"})).options == {"thinking": False}


@pytest.mark.parametrize(
    "fields, where",
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"temperature": 3}, "temperature"),
        ({"tools": [{"name": "bad name", "input_schema": {}}]}, "tools.0.name"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}]}, "messages.0"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(fields, where) -> None:
    with pytest.raises(BadRequest) as info:
        request(**fields)
    assert info.value.message.startswith(where)


def test_server_tools_and_bad_tool_choice_are_clear_400s() -> None:
    with pytest.raises(BadRequest, match="server tool 'web_search_20250305'"):
        A.convert(request(tools=[{"type": "web_search_20250305", "name": "web_search"}]))
    with pytest.raises(BadRequest, match="not in `tools`"):
        A.convert(request(tools=[{"name": "a"}], tool_choice={"type": "tool", "name": "b"}))
    with pytest.raises(BadRequest, match="requires `tools`"):
        A.convert(request(tool_choice={"type": "any"}))


# --------------------------------------------------------------------------- answer


EVENTS = [
    ReasoningDelta("Think"),
    ReasoningDelta("ing."),
    TextDelta("Hello"),
    TextDelta(" there."),
    ToolCallDelta(0, "call_abc", "get_weather", ""),
    ToolCallDelta(0, arguments='{"city": '),
    ToolCallDelta(0, arguments='"Oslo"}'),
    Usage(12, 7, 19),
    Finished("tool_calls"),
]


def test_stream_is_the_exact_anthropic_event_sequence() -> None:
    r = A.MessageRenderer(id="msg_1", model="qwen3-max", input_tokens=9, thinking=True)
    frames = r.start()
    for event in EVENTS:
        frames += r.render(event)
    frames += r.close()
    events = parsed(frames)
    for name, data in events:
        assert name == data["type"]
        if name != "ping":
            STREAM_EVENT.validate_python(data)
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",  # signature_delta
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] == 9
    assert [d["delta"]["type"] for n, d in events if n == "content_block_delta"] == [
        "thinking_delta",
        "thinking_delta",
        "signature_delta",
        "text_delta",
        "text_delta",
        "input_json_delta",
        "input_json_delta",
    ]
    tool = events[11][1]["content_block"]
    assert tool["type"] == "tool_use" and tool["id"] == "toolu_abc" and tool["input"] == {}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 7 and delta["usage"]["input_tokens"] == 12
    final = Message.model_validate(r.message())
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[2].input == {"city": "Oslo"} and final.stop_reason == "tool_use"


def test_non_stream_message_is_what_the_stream_built() -> None:
    streamed = A.MessageRenderer(id="msg_1", model="m", thinking=True)
    for event in EVENTS:
        streamed.render(event)
    replayed = A.MessageRenderer(id="msg_1", model="m", thinking=True).replay(collect(EVENTS))
    assert replayed == streamed.message()
    Message.model_validate(replayed)


def test_reasoning_is_hidden_unless_thinking_was_asked_and_stop_reasons() -> None:
    r = A.MessageRenderer(id="msg_1", model="m")
    body = r.replay(collect([ReasoningDelta("secret"), TextDelta("answer"), Finished("length")]))
    assert [b["type"] for b in body["content"]] == ["text"] and body["stop_reason"] == "max_tokens"
    assert A.MessageRenderer(id="m", model="m").replay(collect([TextDelta("x")]))["stop_reason"] == "end_turn"


def test_errors_in_anthropic_shape_and_status() -> None:
    cases = [
        (BadRequest("bad"), 400, "invalid_request_error"),
        (AuthenticationError("who"), 401, "authentication_error"),
        (NotFound("gone"), 404, "not_found_error"),
        (RateLimited("slow"), 429, "rate_limit_error"),
        (UpstreamUnavailable("No usable Qwen account", code="accounts_invalid"), 529, "overloaded_error"),
        (ApiError("boom", status=502, type="upstream_error"), 500, "api_error"),
    ]
    for err, status, kind in cases:
        assert A.error_status(err) == status
        assert A.error_body(err) == {"type": "error", "error": {"type": kind, "message": err.message}}
    r = A.MessageRenderer(id="m", model="m")
    ((name, data),) = parsed(r.error(RateLimited("slow")))
    assert name == "error" and data["error"]["type"] == "rate_limit_error"
    assert r.close() == []  # no message_stop after an error


# --------------------------------------------------------------------------- names and tokens

SERVED = ["qwen3.7-plus", "qwen3.8-max", "qwen3.7-max", "qwen3.6-plus", "qwen3.8-max-thinking", "GigaChat-2-Max"]


def test_claude_names_map_to_live_qwen_models() -> None:
    assert A.resolve_model("claude-opus-4-1-20250805", None, SERVED) == "qwen3.8-max"
    assert A.resolve_model("claude-sonnet-4-5", None, SERVED) == "qwen3.8-max"
    assert A.resolve_model("claude-3-5-haiku-20241022", None, SERVED) == "qwen3.7-plus"
    assert A.resolve_model("claude-unknown", None, SERVED) == "qwen3.8-max"  # as sonnet
    coder = ["qwen3-max", "qwen3-coder-plus", "qwen3-coder-30b-a3b-instruct", "qwen3-coder-flash"]
    assert A.resolve_model("claude-opus-4", None, coder) == "qwen3-coder-plus"
    assert A.resolve_model("claude-haiku-4-5", None, coder) == "qwen3-coder-flash"


def test_model_map_setting_and_served_names() -> None:
    setting = "haiku=qwen-turbo|qwen3.6-plus, claude-opus-4-1=GigaChat-2-Max"
    assert A.resolve_model("claude-haiku-4-5", setting, SERVED) == "qwen3.6-plus"  # first served candidate
    assert A.resolve_model("claude-opus-4-1", setting, SERVED) == "GigaChat-2-Max"  # exact name wins
    assert A.resolve_model("GigaChat-2-Max", setting, SERVED) == "GigaChat-2-Max"
    assert A.resolve_model("qwen3.7-max", None, SERVED) == "qwen3.7-max"
    assert A.resolve_model("claude-sonnet-4", "sonnet=qwen-xyz", []) == "qwen-xyz"  # nothing served: as written


def test_token_estimate_rule() -> None:
    small = A.estimate_tokens(
        A.parse(A.CountTokensRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    )
    text = "x" * 4000
    big = A.parse(A.CountTokensRequest, {"model": "m", "system": text, "messages": [{"role": "user", "content": "hi"}]})
    assert 1000 <= A.estimate_tokens(big) - small <= 1005  # 4,000 bytes of system prompt
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100000}}
    with_image = A.parse(A.CountTokensRequest, {"model": "m", "messages": [{"role": "user", "content": [image]}]})
    assert 1600 < A.estimate_tokens(with_image) < 1650


def test_stop_sequences_end_the_answer_even_across_deltas() -> None:
    r = A.MessageRenderer(id="m", model="m", stop_sequences=["END", "\n\nHuman:"])
    frames = r.start()
    for piece in ["Hello wor", "ld E", "N", "D and more", " text"]:
        frames += r.render(TextDelta(piece))
    frames += r.render(Finished("stop")) + r.close()
    texts = [d["delta"]["text"] for n, d in parsed(frames) if n == "content_block_delta"]
    assert texts == ["Hello wor", "ld "]  # "E", then "EN", were held back
    delta = next(d for n, d in parsed(frames) if n == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert [n for n, _ in parsed(frames)][-1] == "message_stop" and r.message()["stop_sequence"] == "END"
    # a held-back prefix that never completes is released at the end
    r = A.MessageRenderer(id="m", model="m", stop_sequences=["END"])
    body = r.replay(collect([TextDelta("it ends with E"), Finished("stop")]))
    assert body["content"][0]["text"] == "it ends with E" and body["stop_reason"] == "end_turn"


def test_an_answer_in_many_pieces_is_whole_when_read_mid_stream_and_at_the_end() -> None:
    """Block texts and tool arguments grow as pieces (``wire/pieces.Growing``: ``+=`` on a
    dict value was quadratic); every read, mid-stream or final, sees all of them."""
    r = A.MessageRenderer(id="m", model="m", thinking=True)
    r.start()
    for n in range(300):
        r.render(ReasoningDelta(f"t{n} "))
    assert r.message()["content"][0]["thinking"] == "".join(f"t{n} " for n in range(300))
    for n in range(3000):
        r.render(TextDelta(f"w{n} "))
        if n == 1500:
            assert r.message()["content"][1]["text"].endswith("w1499 w1500 ")
    arguments = json.dumps({"path": "a.txt", "content": "x" * 5000})
    for i in range(0, len(arguments), 7):
        r.render(ToolCallDelta(0, "call_1", "write", arguments[i : i + 7]))
    r.render(Finished("tool_calls"))
    final = Message.model_validate(r.message())
    assert final.content[0].signature == A.signature(final.content[0].thinking)
    assert final.content[1].text == "".join(f"w{n} " for n in range(3000))
    assert final.content[2].input == {"path": "a.txt", "content": "x" * 5000}
