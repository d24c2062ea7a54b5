"""The OpenAI Responses wire module: request conversion, the rendered events and object
(checked against the ``openai`` SDK's Responses types), stored input items."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from qwenproxy.errors import BadRequest, RateLimited
from qwenproxy.events import Annotation, Finished, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from qwenproxy.wire import responses as R
from qwenproxy.wire.openai import collect

STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def request(**fields) -> R.ResponsesRequest:
    return R.parse(R.ResponsesRequest, {"model": "qwen3-max", "input": "hi", **fields})


def parsed(frames: list[str]) -> list[dict]:
    out = []
    for f in frames:
        head, data = f[:-2].split("\n")
        body = json.loads(data[6:])
        assert head == f"event: {body['type']}"
        STREAM_EVENT.validate_python(body)
        out.append(body)
    return out


# --------------------------------------------------------------------------- request


def test_items_become_chat_messages() -> None:
    req = request(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use metric."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                    {"type": "input_file", "file_id": "file-abc"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "5C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "20C"}]},
        ],
        tools=[WEATHER],
    )
    conv = R.convert(req)
    assert conv.system == "Be brief."
    assert conv.with_history([]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use metric."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "file", "file": {"file_id": "file-abc"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "20C"},
    ]
    assert conv.tools == [
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["parameters"]}}
    ]


def test_options_reasoning_text_format_and_tool_choice() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    conv = R.convert(
        request(
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
            max_output_tokens=300,
            temperature=0.5,
            top_p=0.8,
            reasoning={"effort": "high", "summary": "auto"},
            text={"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True}},
        )
    )
    assert conv.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert conv.options == {
        "thinking": True,
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}},
    }
    assert (conv.max_tokens, conv.temperature, conv.top_p, conv.summary) == (300, 0.5, 0.8, True)
    assert R.convert(request(reasoning={"effort": "none"})).options == {"thinking": False}
    allowed = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]}
    conv = R.convert(request(tools=[WEATHER, {**WEATHER, "name": "other"}], tool_choice=allowed))
    assert conv.tool_choice == "required" and [t["function"]["name"] for t in conv.tools] == ["get_weather"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"tools": [{"type": "web_search"}]}, "built-in tool 'web_search'"),
        ({"tool_choice": {"type": "file_search"}}, "built-in tool"),
        ({"input": None}, "'input'"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
        ({"background": True}, "background"),
        ({"text": {"format": {"type": "json_schema"}}}, "needs `name` and `schema`"),
    ],
)
def test_unsupported_requests_are_clear_400s(fields, message) -> None:
    with pytest.raises(BadRequest, match=message):
        R.convert(request(**fields))


def test_malformed_requests_are_400() -> None:
    for bad in ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, {"temperature": 5}):
        with pytest.raises(BadRequest):
            request(**bad)


def test_input_items_get_ids() -> None:
    items = R.input_items(
        request(
            input=[{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c", "output": "1"}]
        ).input
    )
    assert items[0]["id"].startswith("msg_") and items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[1]["id"].startswith("fco_") and items[1]["status"] == "completed"
    assert R.input_items("plain")[0]["role"] == "user"


# --------------------------------------------------------------------------- answer

EVENTS = [
    ReasoningDelta("Think"),
    ReasoningDelta("ing."),
    TextDelta("Hello [[1]]"),
    TextDelta(" there."),
    Annotation("https://a.example", "A"),
    ToolCallDelta(0, "call_abc", "get_weather", ""),
    ToolCallDelta(0, arguments='{"city": '),
    ToolCallDelta(0, arguments='"Oslo"}'),
    Usage(12, 7, 19, raw={"output_tokens_details": {"reasoning_tokens": 3}}),
    Finished("tool_calls"),
]


def test_stream_is_the_typed_event_sequence() -> None:
    r = R.ResponseRenderer(id="resp_1", model="qwen3-max", summary=True, echo={"tools": [WEATHER]})
    frames = r.start()
    for event in EVENTS:
        frames += r.render(event)
    frames += r.close()  # response.completed comes last, after the answer is saved
    events = parsed(frames)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed" and final.output_text == "Hello [[1]] there."
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].summary[0].text == "Thinking."
    assert final.output[1].content[0].annotations[0].url == "https://a.example"
    call = final.output[2]
    assert call.call_id == "call_abc" and json.loads(call.arguments) == {"city": "Oslo"}
    assert final.usage.output_tokens_details.reasoning_tokens == 3 and final.usage.total_tokens == 19
    assert final.tools[0].name == "get_weather"


def test_non_stream_object_matches_the_stream_shape() -> None:
    streamed = R.ResponseRenderer(id="resp_1", model="m", summary=True)
    for event in EVENTS:
        streamed.render(event)
    replayed = R.ResponseRenderer(id="resp_1", model="m", summary=True).replay(collect(EVENTS))

    def shape(body: dict) -> list:
        return [{k: v for k, v in item.items() if k != "id"} for item in body["output"]]

    assert shape(replayed) == shape(streamed.response())
    Response.model_validate(replayed)


def test_reasoning_without_summary_is_not_shown_and_length_is_incomplete() -> None:
    body = R.ResponseRenderer(id="r", model="m").replay(
        collect([ReasoningDelta("x" * 40), TextDelta("a"), Finished("length")])
    )
    assert [o["type"] for o in body["output"]] == ["message"]
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 10  # estimated: 40 characters / 4


def test_error_event_then_failed() -> None:
    r = R.ResponseRenderer(id="r", model="m")
    r.start()
    r.render(TextDelta("part"))
    error, failed = parsed(r.error(RateLimited("slow down")) + r.close())
    assert error["type"] == "error" and error["message"] == "slow down" and error["code"] == "rate_limited"
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}


def test_output_messages_continue_the_conversation() -> None:
    body = R.ResponseRenderer(id="r", model="m").replay(collect(EVENTS))
    assert R.output_messages(body) == [
        {
            "role": "assistant",
            "content": "Hello [[1]] there.",
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        }
    ]


def test_an_answer_in_many_pieces_is_whole_in_every_done_event_and_object() -> None:
    """Summary text, output text and arguments grow as pieces (``wire/pieces.Growing``:
    ``+=`` on a dict value was quadratic); the ``.done`` events and the object read them all."""
    r = R.ResponseRenderer(id="resp_1", model="m", summary=True)
    frames = r.start()
    for n in range(300):
        frames += r.render(ReasoningDelta(f"t{n} "))
    for n in range(3000):
        frames += r.render(TextDelta(f"w{n} "))
        if n == 1500:
            assert r.response()["output"][1]["content"][0]["text"].endswith("w1499 w1500 ")
    arguments = json.dumps({"path": "a.txt", "content": "x" * 5000})
    for i in range(0, len(arguments), 7):
        frames += r.render(ToolCallDelta(0, "call_1", "write", arguments[i : i + 7]))
    frames += r.render(Finished("tool_calls"))
    frames += r.close()
    done = {e["type"]: e for e in parsed(frames) if e["type"].endswith(".done") and "item" not in e}
    text = "".join(f"w{n} " for n in range(3000))
    assert done["response.reasoning_summary_text.done"]["text"] == "".join(f"t{n} " for n in range(300))
    assert done["response.output_text.done"]["text"] == text
    assert done["response.function_call_arguments.done"]["arguments"] == arguments
    final = Response.model_validate(parsed(frames)[-1]["response"])
    assert final.output_text == text and final.output[2].arguments == arguments
