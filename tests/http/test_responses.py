"""The OpenAI Responses API end to end: ``openai``'s ``client.responses`` → the app (a real
socket) → the fake chat.qwen.ai, scripted with its ``answer`` knob."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from qwenproxy.db.models import ApiResponse, Chat
from tests.helpers import RESPONSES_WEATHER as WEATHER
from tests.helpers import completions, weather_script


def test_create_plain(oai, fake_qwen) -> None:
    fake_qwen.answer = lambda text: f"Hi {text}"
    response = oai.responses.create(model="qwen3-max", input="Bob", instructions="Be kind.", metadata={"k": "v"})
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == "Hi Bob" and response.model == "qwen3-max"
    assert [o.type for o in response.output] == ["message"] and response.output[0].id.startswith("msg_")
    assert response.instructions == "Be kind." and response.metadata == {"k": "v"} and response.store is True
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    sent = completions(fake_qwen)[-1]
    assert sent["system_message"] == "Be kind." and sent["messages"][0]["content"] == "Bob"
    assert oai.responses.retrieve(response.id).model_dump() == response.model_dump()
    assert Chat.get(Chat.name == "Responses API Chat")  # kept like every conversation


def test_streamed_events_and_the_stored_result(oai, fake_qwen) -> None:
    fake_qwen.answer = lambda text: "one two three"
    events = list(oai.responses.create(model="qwen3-max", input="count", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds.count("response.output_text.delta") >= 3  # tokens stream as they arrive
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == "one two three" and final.status == "completed"
    assert oai.responses.retrieve(final.id).output_text == "one two three"
    with oai.responses.stream(model="qwen3-max", input="count") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert stream.get_final_response().output_text == text == "one two three"


def test_reasoning_summary(oai, fake_qwen) -> None:
    response = oai.responses.create(model="qwen3-max", input="why", reasoning={"effort": "high", "summary": "auto"})
    assert [o.type for o in response.output] == ["reasoning", "message"]
    assert response.output[0].summary[0].text == "The user asked: why. I will answer it."
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert completions(fake_qwen)[-1]["messages"][0]["feature_config"]["thinking_enabled"] is True
    events = list(
        oai.responses.create(
            model="qwen3-max", input="why", reasoning={"summary": "auto", "effort": "low"}, stream=True
        )
    )
    assert "response.reasoning_summary_text.delta" in [e.type for e in events]


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_round_trip(oai, fake_qwen, stream) -> None:
    fake_qwen.answer = weather_script()

    def create(**kw):
        if not stream:
            return oai.responses.create(model="qwen3-max", tools=[WEATHER], **kw)
        events = list(oai.responses.create(model="qwen3-max", tools=[WEATHER], stream=True, **kw))
        if any(e.type == "response.output_item.added" and e.item.type == "function_call" for e in events):
            assert "response.function_call_arguments.delta" in [e.type for e in events]
            assert "response.function_call_arguments.done" in [e.type for e in events]
        return events[-1].response

    first = create(input=[{"role": "user", "content": "Weather in Paris?"}])
    call = first.output[-1]
    assert (
        call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    )
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    # stateless: the client sends the whole conversation back
    second = create(
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *[o.model_dump(exclude_none=True) for o in first.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp": 21})},
        ]
    )
    assert second.output_text == "It is 21 degrees in Paris."
    sent = completions(fake_qwen)[-1]["messages"][0]["content"]
    assert f"Result of get_weather (call {call.call_id})" in sent
    # stateful: only the result, after previous_response_id
    third = create(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp": 5})}],
    )
    assert third.output_text == "It is 5 degrees in Paris."
    sent = completions(fake_qwen)[-1]
    first_turn = completions(fake_qwen)[0]
    assert sent["chat_id"] == first_turn["chat_id"] and sent["parent_id"]  # the same upstream chat continues
    assert "Weather in Paris?" not in sent["messages"][0]["content"]  # the upstream has it already


def test_previous_response_id_continues_the_conversation(oai, fake_qwen) -> None:
    fake_qwen.answer = lambda text: "Hello Bob" if "Bob" in text else "You are Bob"
    first = oai.responses.create(model="qwen3-max", input="My name is Bob")
    second = oai.responses.create(model="qwen3-max", input="What is my name?", previous_response_id=first.id)
    assert second.output_text == "You are Bob" and second.previous_response_id == first.id
    a, b = completions(fake_qwen)[-2:]
    assert b["chat_id"] == a["chat_id"] and b["parent_id"] is not None
    assert b["messages"][0]["content"] == "What is my name?"
    row = ApiResponse.get(ApiResponse.id == second.id)
    assert [m["role"] for m in json.loads(row.history)] == ["user", "assistant", "user", "assistant"]
    # the input items of a response, newest first, in pages
    items = oai.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "What is my name?"
    # gone after DELETE
    oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.create(model="qwen3-max", input="x", previous_response_id=first.id)
    assert info.value.body["param"] == "previous_response_id"


def test_input_items_pages(oai, live_server) -> None:
    items = [{"role": "user", "content": f"m{n}"} for n in range(5)]
    response = oai.responses.create(model="qwen3-max", input=items)
    page = oai.responses.input_items.list(response.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["m0", "m1"] and page.has_more
    texts = [i.content[0].text for i in oai.responses.input_items.list(response.id, limit=2)]  # all pages, newest first
    assert texts == ["m4", "m3", "m2", "m1", "m0"]
    r = requests.get(f"{live_server.url}/v1/responses/{response.id}/input_items?limit=0", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_store_false_is_not_kept(oai) -> None:
    response = oai.responses.create(model="qwen3-max", input="x", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(response.id)


def test_unsupported_and_malformed_requests_are_400(oai) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="qwen3-max", input="x", tools=[{"type": "web_search"}])
    assert "built-in tool 'web_search'" in info.value.message and info.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="qwen3-max", input=[{"type": "message", "role": "robot", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="qwen3-max", input=[{"type": "function_call_output", "call_id": "c", "output": "x"}])


def test_text_format_goes_upstream_as_response_format(oai, fake_qwen, app) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    fake_qwen.answer = lambda text: '{"a": 1}'
    response = oai.responses.create(
        model="qwen3-max",
        input="give a",
        text={"format": {"type": "json_schema", "name": "A", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text) == {"a": 1}
    assert response.text.format.type == "json_schema" and response.text.format.name == "A"


def test_in_stream_failure_is_error_then_failed(oai, fake_qwen) -> None:
    fake_qwen.hostile = "stream_error"
    events = list(oai.responses.create(model="qwen3-max", input="words:10", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert oai.responses.retrieve(failed.id).status == "failed"
