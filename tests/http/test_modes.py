"""Qwen web modes end to end: the ``openai`` client → the app (a real socket) → the fake."""

from __future__ import annotations

import base64
import json

import pytest

from tests.fakes.qwen_web import TINY_PNG
from tests.helpers import CHAT_WEATHER as WEATHER
from tests.helpers import completions, weather_script
from tests.openai_schema import sse_events, validate


def streamed(stream) -> tuple[str, str, dict, list]:
    """(content, reasoning, {index: tool call}, chunks) of an ``openai`` stream."""
    chunks = list(stream)
    content = reasoning = ""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = call.id or entry["id"]
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["arguments"] += (call.function.arguments or "") if call.function else ""
    return content, reasoning, calls, chunks


# --------------------------------------------------------------------------- thinking


@pytest.mark.parametrize("style", ["think", "summary"])
def test_thinking_is_reasoning_content_not_content(oai, fake_qwen, style) -> None:
    fake_qwen.thinking_style = style
    r = oai.chat.completions.create(model="qwen3-max-thinking", messages=[{"role": "user", "content": "hi"}])
    message = r.choices[0].message
    assert message.content == "Echo: hi"
    assert "The user asked: hi." in message.model_extra["reasoning_content"]
    assert r.model == "qwen3-max-thinking" and r.usage.completion_tokens_details.reasoning_tokens > 0
    sent = completions(fake_qwen)[-1]
    assert sent["model"] == "qwen3-max" and sent["messages"][0]["feature_config"]["thinking_enabled"] is True

    content, reasoning, _, chunks = streamed(
        oai.chat.completions.create(
            model="qwen3-max", messages=[{"role": "user", "content": "yo"}], stream=True, reasoning_effort="high"
        )
    )
    assert content == "Echo: yo" and "The user asked: yo." in reasoning and "Echo" not in reasoning
    if style == "summary":
        assert reasoning.startswith("Reading the question\n\nThe user asked: yo.")


def test_thinking_off_by_field_and_think_tags_setting(client, app, fake_qwen) -> None:
    body = {"model": "qwen3-max-thinking", "messages": [{"role": "user", "content": "x"}], "enable_thinking": False}
    assert (
        "reasoning_content" not in client.post("/api/chat/completions", json=body).get_json()["choices"][0]["message"]
    )
    assert completions(fake_qwen)[-1]["messages"][0]["feature_config"]["thinking_enabled"] is False
    app.config["REASONING_IN_CONTENT"] = True
    body["enable_thinking"] = True
    message = client.post("/api/chat/completions", json=body).get_json()["choices"][0]["message"]
    assert message["content"] == "<think>\nThe user asked: x. I will answer it.\n</think>\n\nEcho: x"
    raw = client.post("/api/chat/completions", json={**body, "stream": True}).get_data(as_text=True)
    chunks = [json.loads(e) for e in sse_events(raw)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == message["content"]


# --------------------------------------------------------------------------- search


def test_search_returns_sources_as_annotations(oai, fake_qwen) -> None:
    r = oai.chat.completions.create(model="qwen3-max-search", messages=[{"role": "user", "content": "news"}])
    message = r.choices[0].message
    assert message.content == "Echo: news [[1]] [[2]]"
    cites = [a.url_citation for a in message.annotations]
    assert [c.title for c in cites] == ["Result 1 about news", "Result 2 about news"]
    assert all(c.url.startswith("https://example.com/") for c in cites)
    assert message.content[cites[0].start_index : cites[0].end_index] == "[[1]]"
    assert completions(fake_qwen)[-1]["messages"][0]["chat_type"] == "search"

    content, _, _, chunks = streamed(
        oai.chat.completions.create(
            model="qwen3-max",
            messages=[{"role": "user", "content": "more"}],
            stream=True,
            extra_body={"web_search_options": {}},
        )
    )
    assert content == "Echo: more [[1]] [[2]]"
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert len(final.choices[0].delta.model_extra["annotations"]) == 2


# --------------------------------------------------------------------------- images


def test_images_generations_returns_urls(oai, fake_qwen) -> None:
    r = oai.images.generate(model="dall-e-3", prompt="a red fox", size="1792x1024")
    validate("ImagesResponse", r.model_dump(exclude_unset=True))
    assert r.data[0].url.startswith("https://cdn.qwenlm.ai/output/") and "key=" in r.data[0].url
    sent = completions(fake_qwen)[-1]
    assert sent["messages"][0]["chat_type"] == "t2i" and sent["size"] == "16:9"
    assert sent["messages"][0]["content"] == "a red fox" and sent["model"] == fake_qwen.models[0]  # the live default


def test_images_b64_and_image_chat_suffix(client, fake_qwen) -> None:
    fake_qwen.image_base_url = fake_qwen.url
    r = client.post("/v1/images/generations", json={"prompt": "p", "n": 2, "response_format": "b64_json"})
    assert r.status_code == 200
    validate("ImagesResponse", r.get_json())
    assert [base64.b64decode(d["b64_json"]) for d in r.get_json()["data"]] == [TINY_PNG, TINY_PNG]
    chat = client.post(
        "/api/chat/completions", json={"model": "qwen3-max-image", "messages": [{"role": "user", "content": "c"}]}
    )
    content = chat.get_json()["choices"][0]["message"]["content"]
    assert content.startswith(f"![image]({fake_qwen.url}/output/")
    for bad in ({"prompt": ""}, {"prompt": "p", "n": 9}, {"prompt": "p", "size": "huge"}):
        assert client.post("/v1/images/generations", json=bad).status_code == 400


# --------------------------------------------------------------------------- tools


# the scripted model: call the tool (in a fenced block, as models often do), then answer from its result
weather = weather_script('I will look it up.\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```')


@pytest.mark.parametrize("stream", [False, True])
def test_two_step_tool_calling_conversation(oai, fake_qwen, stream) -> None:
    fake_qwen.answer = weather
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = oai.chat.completions.create(model="qwen3-max", messages=messages, tools=[WEATHER], stream=stream)
    if stream:
        content, _, calls, chunks = streamed(first)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) >= 2  # arguments arrive in parts
        call = calls[0]
    else:
        assert first.choices[0].finish_reason == "tool_calls"
        content = first.choices[0].message.content
        tc = first.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    assert content == "I will look it up.\n"
    assert call["name"] == "get_weather" and json.loads(call["arguments"]) == {"city": "Paris"}
    sent = completions(fake_qwen)[-1]["messages"][0]["content"]
    assert sent.startswith("# Tools") and sent.endswith("Weather in Paris?")

    messages += [
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temp": 21})},
    ]
    second = oai.chat.completions.create(model="qwen3-max", messages=messages, tools=[WEATHER], stream=stream)
    text = streamed(second)[0] if stream else second.choices[0].message.content
    assert text == "It is 21 degrees in Paris."
    sent = completions(fake_qwen)[-1]["messages"][0]["content"]
    assert '"get_weather"' in sent and f"call {call['id']}" in sent and '{"temp": 21}' in sent


def test_tool_results_continue_the_upstream_chat(client, fake_qwen) -> None:
    fake_qwen.answer = weather
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.post("/api/chat/completions", json={"messages": messages, "tools": [WEATHER]}).get_json()
    message = first["choices"][0]["message"]
    messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": '{"temp": 5}'}]
    second = client.post(
        "/api/chat/completions", json={"messages": messages, "tools": [WEATHER], "chatId": first["chatId"]}
    ).get_json()
    assert second["choices"][0]["message"]["content"] == "It is 5 degrees in Paris."
    sent = completions(fake_qwen)[-1]
    assert sent["parent_id"] == first["parentId"]
    assert "Weather in Paris?" not in sent["messages"][0]["content"]  # upstream already has it


def test_malformed_tool_call_degrades_to_content(oai, fake_qwen) -> None:
    bad = '<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call>'
    fake_qwen.answer = lambda text: bad
    r = oai.chat.completions.create(model="qwen3-max", messages=[{"role": "user", "content": "x"}], tools=[WEATHER])
    assert r.choices[0].message.content == bad and r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
    content, _, calls, _ = streamed(
        oai.chat.completions.create(
            model="qwen3-max", messages=[{"role": "user", "content": "x"}], tools=[WEATHER], stream=True
        )
    )
    assert content == bad and calls == {}


def test_tool_choice_required_retries_once(oai, fake_qwen) -> None:
    fake_qwen.answer = lambda text: (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        if "You must call a tool now" in text
        else "Just chatting."
    )
    content, _, calls, _ = streamed(
        oai.chat.completions.create(
            model="qwen3-max",
            messages=[{"role": "user", "content": "x"}],
            tools=[WEATHER],
            tool_choice="required",
            stream=True,
        )
    )
    assert content == "" and json.loads(calls[0]["arguments"]) == {"city": "Oslo"}
    sent = completions(fake_qwen)
    assert len(sent) == 2 and sent[1]["chat_id"] == sent[0]["chat_id"] and sent[1]["parent_id"]


# --------------------------------------------------------------------------- models and input


def test_models_list_mode_variants(client, fake_qwen) -> None:
    body = client.get("/api/models").get_json()
    validate("ListModelsResponse", body)
    ids = [m["id"] for m in body["data"]]
    assert {"qwen3-max-thinking", "qwen3-max-search", "qwen3-max-image"} <= set(ids)
    assert "qwen-max-latest-thinking" not in ids and "qwen-max-latest-search" in ids  # no thinking capability


BAD_FIELDS = [
    ({"enable_thinking": "yes"}, "enable_thinking"),
    ({"reasoning_effort": "max"}, "reasoning_effort"),
    ({"web_search_options": "on"}, "web_search_options"),
    ({"size": "huge"}, "size"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
]


def test_bad_mode_fields_are_400(client, fake_qwen) -> None:
    for extra, param in BAD_FIELDS:
        r = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "x"}], **extra})
        assert r.status_code == 400, extra
        validate("ErrorResponse", r.get_json())
        assert r.get_json()["error"]["param"] == param
    assert completions(fake_qwen) == []


def test_tools_are_parsed_once_per_request_even_with_a_retry(client, fake_qwen, monkeypatch) -> None:
    """The request model parses tools/tool_choice once; the provider and its retry reuse it."""
    from qwenproxy.wire.tools import ToolSpec

    parsed = []
    original = ToolSpec.parse.__func__

    def counting(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        parsed.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(ToolSpec, "parse", classmethod(counting))
    fake_qwen.answer = lambda text: (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        if "You must call a tool now" in text
        else "Just chatting."
    )
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "required"}
    answer = client.post("/api/chat/completions", json=body)
    assert answer.status_code == 200 and answer.get_json()["choices"][0]["message"]["tool_calls"]
    assert len(completions(fake_qwen)) == 2  # the retry ran
    assert len(parsed) == 1
