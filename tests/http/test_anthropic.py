"""The Anthropic Messages API end to end: the official ``anthropic`` SDK → the app (a real
socket) → the fake chat.qwen.ai, which the tests script with its ``answer`` knob."""

from __future__ import annotations

import json
import re

import anthropic
import pytest
import requests

from qwenproxy.db.models import Chat, Message
from tests.fakes.server import BackgroundServer
from tests.helpers import ANTHROPIC_WEATHER as WEATHER
from tests.helpers import PARIS_CALL, completions, weather_script

MODEL = "claude-sonnet-5-5"  # a name the SDK knows and does not warn about


# the scripted model: call the tool, then answer from its result
weather = weather_script("I will look it up.\n" + PARIS_CALL)


def test_create_answers_a_message(claude, fake_qwen) -> None:
    fake_qwen.answer = lambda text: f"Hello, {text}!"
    raw = claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=256, system="Be kind.", messages=[{"role": "user", "content": "Bob"}]
    )
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Hello, Bob!"
    assert message.model == MODEL and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = completions(fake_qwen)[-1]
    assert raw.headers["X-Served-Model"] == sent["model"] == "qwen3-coder-plus"  # sonnet -> the coder model
    assert sent["messages"][0]["content"] == "Bob" and sent["system_message"] == "Be kind."
    chat = Chat.get(Chat.id == raw.headers["X-Chat-Id"])  # stored like every conversation
    assert chat.name == "Anthropic API Chat"
    assert [(m.role, m.content) for m in chat.messages.order_by(Message.id)] == [
        ("system", "Be kind."),
        ("user", "Bob"),
        ("assistant", "Hello, Bob!"),
    ]


def test_stream_is_the_anthropic_event_sequence(claude, fake_qwen) -> None:
    fake_qwen.answer = lambda text: "one two three four"
    with claude.messages.stream(model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "count"}]) as s:
        events = list(s)
        final = s.get_final_message()
    kinds = [e.type for e in events if e.type != "text"]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    text_deltas = [e for e in events if e.type == "content_block_delta"]
    assert len(text_deltas) >= 4  # tokens stream as they arrive
    assert final.content[0].text == "one two three four" and final.stop_reason == "end_turn"


def test_raw_stream_bytes(live_server, fake_qwen) -> None:
    """``event:`` names equal the data's ``type``; a ping follows message_start."""
    fake_qwen.answer = lambda text: "hi there"
    r = requests.post(
        live_server.url + "/v1/messages?beta=true",
        json={"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14"},
        timeout=20,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in r.text.split("\n\n") if f]
    names = []
    for frame in frames:
        event, data = frame.split("\n")
        names.append(event.removeprefix("event: "))
        assert json.loads(data.removeprefix("data: "))["type"] == names[-1]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_then_tool_result_round_trip(claude, fake_qwen, stream) -> None:
    fake_qwen.answer = weather
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]

    def ask():
        if not stream:
            return claude.messages.create(model=MODEL, max_tokens=512, messages=messages, tools=[WEATHER])
        with claude.messages.stream(model=MODEL, max_tokens=512, messages=messages, tools=[WEATHER]) as s:
            deltas = [e for e in s if e.type == "input_json"]
            message = s.get_final_message()
        if message.stop_reason == "tool_use":
            assert deltas, "the tool input streams as input_json_delta"
        return message

    first = ask()
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    assert first.content[0].text == "I will look it up.\n"
    call = first.content[1]
    assert call.id.startswith("toolu_") and call.name == "get_weather" and call.input == {"city": "Paris"}
    sent = completions(fake_qwen)[-1]["messages"][0]["content"]
    assert sent.startswith("# Tools") and '"get_weather"' in sent and sent.endswith("Weather in Paris?")

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": '{"temp": 21}'}]},
    ]
    second = ask()
    assert second.stop_reason == "end_turn" and second.content[0].text == "It is 21 degrees in Paris."
    sent = completions(fake_qwen)[-1]["messages"][0]["content"]
    assert f"Result of get_weather (call {call.id})" in sent and '{"temp": 21}' in sent


def test_tool_choice_any_forces_a_call(claude, fake_qwen) -> None:
    fake_qwen.answer = lambda text: (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
        if "You must call a tool now" in text
        else "Just chatting."
    )
    message = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "x"}],
        tools=[WEATHER],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use" and message.content[-1].input == {"city": "Oslo"}


def test_thinking_blocks_only_when_asked(claude, fake_qwen) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "why"}],
    ) as s:
        kinds = [e.delta.type for e in s if e.type == "content_block_delta"]
        message = s.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.thinking == "The user asked: why. I will answer it." and thinking.signature
    assert kinds.index("signature_delta") == kinds.index("text_delta") - 1  # closes the thinking block
    assert completions(fake_qwen)[-1]["messages"][0]["feature_config"]["thinking_enabled"] is True
    # the thinking block goes back with the next turn and is ignored
    again = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[
            {"role": "user", "content": "why"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
            {"role": "user", "content": "and?"},
        ],
    )
    assert [b.type for b in again.content] == ["text"]
    first_turn, second_turn = completions(fake_qwen)[-2:]  # the thinking sent back still matches
    assert second_turn["chat_id"] == first_turn["chat_id"] and second_turn["messages"][0]["content"] == "and?"


def test_count_tokens(claude) -> None:
    small = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    big = claude.messages.count_tokens(
        model=MODEL, system="x" * 8000, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER]
    )
    assert 0 < small.input_tokens < 30 and big.input_tokens >= small.input_tokens + 2000


# --------------------------------------------------------------------------- errors


def test_bad_requests_are_anthropic_400s(claude, live_server) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert info.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": info.value.body["error"]["message"]},
    }
    assert info.value.body["error"]["message"].startswith("max_tokens")
    json_type = {"Content-Type": "application/json"}  # malformed JSON, not a wrong media type (415)
    r = requests.post(live_server.url + "/v1/messages?beta=true", data="{nope", headers=json_type, timeout=10)
    assert r.status_code == 400 and r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError, match="server tool"):
        claude.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )


def test_unknown_paths_and_methods_in_anthropic_shape(live_server) -> None:
    r = requests.post(live_server.url + "/anthropic/v1/nothing", json={}, timeout=10)
    assert r.status_code == 404 and r.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Unknown endpoint (Эндпоинт не найден)"},
    }
    r = requests.get(live_server.url + "/v1/messages?beta=true", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.get(live_server.url + "/v1/nothing", timeout=10)
    assert "type" not in r.json() and r.json()["error"]["code"] == "not_found"  # OpenAI paths keep OpenAI's shape


def test_api_keys_by_bearer_or_x_api_key(live_server, tmp_path) -> None:
    (tmp_path / "Authorization.txt").write_text("sk-gateway-1\n", encoding="utf-8")
    body = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic.Anthropic(base_url=live_server.url, api_key="wrong", max_retries=0).messages.create(**body)
    assert info.value.status_code == 401 and info.value.body["error"]["type"] == "authentication_error"
    by_key = anthropic.Anthropic(base_url=live_server.url, api_key="sk-gateway-1", max_retries=0)  # x-api-key
    by_token = anthropic.Anthropic(base_url=live_server.url, auth_token="sk-gateway-1", max_retries=0)  # Bearer
    assert by_key.messages.create(**body).content[0].text
    assert by_token.messages.count_tokens(model=MODEL, messages=body["messages"]).input_tokens > 0
    prefixed = anthropic.Anthropic(base_url=live_server.url + "/anthropic", api_key="sk-gateway-1", max_retries=0)
    assert prefixed.messages.create(**body).content[0].text


def test_quota_is_429(claude, fake_qwen, app) -> None:
    fake_qwen.quota[app.extensions["account_pool"].acquire().token] = 0
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "rate_limit_error" and info.value.response.headers["Retry-After"]


def test_no_usable_account_is_529_overloaded(claude, fake_qwen, app) -> None:
    fake_qwen.revoked.add(app.extensions["account_pool"].acquire().token)
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
    assert "relogin" in info.value.body["error"]["message"]


def test_error_after_the_start_is_an_error_event(claude, fake_qwen) -> None:
    fake_qwen.hostile = "stream_error"
    got = []
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        claude.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "words:10"}]) as s,
    ):
        for event in s:
            got.append(event.type)
    assert got[0] == "message_start" and "message_stop" not in got
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "api_error"


def test_served_model_names_and_haiku(claude, fake_qwen) -> None:
    claude.messages.create(model="claude-haiku-5-5", max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert completions(fake_qwen)[-1]["model"] == "qwen3-coder-30b-a3b-instruct"  # the fast coder
    claude.messages.create(model="qwen3-max", max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert completions(fake_qwen)[-1]["model"] == "qwen3-max"  # a served name as it is


def test_model_map_setting(tmp_path, fake_qwen) -> None:
    from qwenproxy import create_app
    from tests.conftest import app_config

    app = create_app(app_config(tmp_path, fake_qwen, ANTHROPIC_MODEL_MAP="sonnet=qwen-plus-2025-09-11"))
    try:
        r = app.test_client().post(
            "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        )
        assert r.status_code == 200 and r.headers["X-Served-Model"] == "qwen-plus-2025-09-11"
    finally:
        app.extensions["providers"].close()


# --------------------------------------------------------------------------- an agent


def test_agent_loop_big_system_prompt_ten_tools_three_rounds_streamed(claude, fake_qwen) -> None:
    """What Claude Code sends: a 40 KB system prompt, 10 tools, and a loop of three tool
    rounds, streamed, that ends in a text answer."""
    system = [
        {"type": "text", "text": "You are a coding agent.\n" + "Follow the house rules. " * 1800},
        {"type": "text", "text": "Be precise.", "cache_control": {"type": "ephemeral"}},
    ]
    assert len(system[0]["text"]) >= 40_000
    tools = [
        {
            "name": name,
            "description": f"The {name} tool. " * 20,
            "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
        }
        for name in ("Read", "Write", "Edit", "Glob", "Grep", "Bash", "LS", "WebFetch", "TodoWrite", "Task")
    ]
    plan = [("Read", "app.py"), ("Grep", "TODO"), ("Bash", "pytest -q")]

    def agent(text: str) -> str:
        steps = [int(n) for n in re.findall(r"output of step (\d)", text)]  # the results it was sent
        done = max(steps, default=0)
        if done < len(plan):
            name, arg = plan[done]
            return (
                f"Step {done + 1}.\n<tool_call>\n"
                + json.dumps({"name": name, "arguments": {"arg": arg}})
                + "\n</tool_call>"
            )
        return "All three steps are done: the tests pass."

    fake_qwen.answer = agent
    messages: list = [{"role": "user", "content": [{"type": "text", "text": "Fix the TODO in app.py"}]}]
    for round_ in range(4):
        with claude.messages.stream(
            model=MODEL, max_tokens=32000, system=system, tools=tools, messages=messages, metadata={"user_id": "u1"}
        ) as s:
            message = s.get_final_message()
        sent = completions(fake_qwen)[-1]
        assert sent["system_message"].startswith("You are a coding agent.")
        assert sent["messages"][0]["content"].count('{"name": ') >= 10  # every tool described
        if round_ < 3:
            assert message.stop_reason == "tool_use"
            call = message.content[-1]
            assert (call.name, call.input) == (plan[round_][0], {"arg": plan[round_][1]})
            messages += [
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": f"output of step {round_ + 1}"},
                        {"type": "text", "text": "<system-reminder>Keep going.</system-reminder>"},
                    ],
                },
            ]
        else:
            assert message.stop_reason == "end_turn"
            assert message.content[-1].text == "All three steps are done: the tests pass."
    sent = completions(fake_qwen)[-4:]
    assert "Fix the TODO in app.py" in sent[0]["messages"][0]["content"]
    # Claude Code re-sends everything; the upstream chat holds it, so each round continues that
    # chat with only the new result (and the reminder beside it)
    assert len({s["chat_id"] for s in sent}) == 1 and all(s["parent_id"] for s in sent[1:])
    last = sent[-1]["messages"][0]["content"]
    assert "output of step 3" in last and "Keep going." in last and "output of step 2" not in last


def test_model_list_in_anthropic_shape_for_anthropic_clients(claude, live_server) -> None:
    models = list(claude.models.list())
    assert [m.id for m in models[:3]] == ["claude-opus", "claude-sonnet", "claude-haiku"]
    assert models[0].display_name == "Claude Opus → qwen3-coder-plus" and models[0].type == "model"
    assert "qwen3-max" in [m.id for m in models]
    plain = requests.get(live_server.url + "/v1/models", timeout=10).json()  # OpenAI clients: unchanged
    assert plain["object"] == "list" and plain["data"][0]["object"] == "model"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(claude, fake_qwen, stream) -> None:
    fake_qwen.answer = lambda text: "alpha beta STOP gamma delta"
    kw = {"model": MODEL, "max_tokens": 50, "stop_sequences": ["STOP"], "messages": [{"role": "user", "content": "x"}]}
    if stream:
        with claude.messages.stream(**kw) as s:
            message = s.get_final_message()
    else:
        message = claude.messages.create(**kw)
    assert message.content[0].text == "alpha beta " and message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "STOP"


def test_a_gigachat_model_by_its_own_name_with_the_whole_history(tmp_path, fake_qwen) -> None:
    """Providers without server-side history get the whole conversation, in both APIs."""
    import openai

    from qwenproxy import create_app
    from tests.conftest import app_config
    from tests.fakes.gigachat import FakeGigaChat

    with FakeGigaChat(reply=lambda messages, model: f"{len(messages)} messages") as giga:
        app = create_app(
            app_config(
                tmp_path,
                fake_qwen,
                **giga.settings(),
                GIGACHAT_TIMEOUT=5.0,
            )
        )
        server = BackgroundServer(app, name="app")
        try:
            claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=20)
            history = [
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"},
            ]
            message = claude.messages.create(model="GigaChat-2-Max", max_tokens=50, system="sys", messages=history)
            assert message.content[0].text == "4 messages" and message.model == "GigaChat-2-Max"
            oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=20)
            first = oai.responses.create(model="GigaChat-2-Max", input="one")
            second = oai.responses.create(model="GigaChat-2-Max", input="three", previous_response_id=first.id)
            assert second.output_text == "3 messages"  # one, its answer, three
            assert not [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
        finally:
            server.stop()
            app.extensions["providers"].close()
