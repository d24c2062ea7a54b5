"""Stateless clients (no chatId) against the fake chat.qwen.ai: the history reaches the model,
a re-sent history continues its upstream chat, an edited one branches (README "Conversations")."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from qwenproxy import create_app
from qwenproxy.db.models import Chat, ConversationPoint, Message
from tests.conftest import LiveServer, app_config
from tests.helpers import completions


def chats_created(fake) -> int:
    return sum(1 for r in fake.requests if r["path"] == "/api/v2/chats/new")


def sent_text(body: dict) -> str:
    return body["messages"][0]["content"]


def bob(text: str) -> str:
    """The scripted model: it knows the name only if the earlier turn reached it."""
    if text.endswith("What is my name?"):
        return "Your name is Bob." if "My name is Bob" in text else "I do not know your name."
    return f"Echo: {text}"


@pytest.fixture
def sdk(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="none", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_bob_without_chat_id(sdk, fake_qwen, stream) -> None:
    fake_qwen.answer = bob
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "My name is Bob"},
        {"role": "assistant", "content": "Hi Bob"},
        {"role": "user", "content": "What is my name?"},
    ]
    reply = sdk.chat.completions.create(model="qwen3-max", messages=messages, stream=stream)
    text = (
        "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        if stream
        else reply.choices[0].message.content
    )
    assert text == "Your name is Bob."
    (sent,) = completions(fake_qwen)
    assert sent["system_message"] == "You are terse."
    content = sent_text(sent)
    assert "### user\nMy name is Bob" in content and "### assistant\nHi Bob" in content
    assert content.endswith("What is my name?") and "You are terse." not in content
    assert sent["parent_id"] is None and chats_created(fake_qwen) == 1


def test_a_resent_history_continues_the_same_upstream_chat(sdk, fake_qwen) -> None:
    messages: list[dict] = [{"role": "user", "content": "one"}]
    first = sdk.chat.completions.create(model="qwen3-max", messages=messages)
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "two"}]
    # the second turn streams: a streamed answer is remembered as well
    chunks = list(sdk.chat.completions.create(model="qwen3-max", messages=messages, stream=True))
    second_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    messages += [{"role": "assistant", "content": second_text}, {"role": "user", "content": "three"}]
    assert len(messages) == 5
    third = sdk.chat.completions.create(model="qwen3-max", messages=messages)
    assert third.choices[0].message.content == "Echo: three"

    bodies = completions(fake_qwen)
    assert [sent_text(b) for b in bodies] == ["one", "two", "three"]  # only the new turn each time
    assert chats_created(fake_qwen) == 1 and len({b["chat_id"] for b in bodies}) == 1
    assert bodies[1]["parent_id"] == first.id  # the completion id is Qwen's response_id
    assert bodies[2]["parent_id"] == chunks[0].id
    # one local chat holds the whole conversation, each message once
    (chat,) = Chat.select()
    assert [m.content for m in Message.select().where(Message.chat == chat).order_by(Message.id)] == [
        "one",
        "Echo: one",
        "two",
        "Echo: two",
        "three",
        "Echo: three",
    ]


def test_an_edited_turn_branches_from_the_last_matching_answer(client, fake_qwen) -> None:
    def ask(messages: list[dict]) -> dict:
        r = client.post("/api/chat/completions", json={"model": "qwen3-max", "messages": messages})
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    first = ask([{"role": "user", "content": "u1"}])
    history = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "Echo: u1"}]
    second = ask([*history, {"role": "user", "content": "u2"}])
    assert second["chatId"] == first["chatId"]

    # the user edits u2: the same upstream chat, parent = the answer before it (a1)
    edited = ask([*history, {"role": "user", "content": "u2, edited"}])
    body = completions(fake_qwen)[-1]
    assert sent_text(body) == "u2, edited" and body["parent_id"] == first["parentId"]
    assert body["chat_id"] == completions(fake_qwen)[0]["chat_id"] and chats_created(fake_qwen) == 1
    assert edited["chatId"] != first["chatId"]  # a branch is a new local chat

    # a deeper divergence: the turns after a1 that upstream does not hold are folded
    ask(
        [
            *history,
            {"role": "user", "content": "u2x"},
            {"role": "assistant", "content": "a2x (written by the client)"},
            {"role": "user", "content": "u3"},
        ]
    )
    body = completions(fake_qwen)[-1]
    assert body["parent_id"] == first["parentId"] and chats_created(fake_qwen) == 1
    content = sent_text(body)
    assert "### user\nu2x" in content and "### assistant\na2x (written by the client)" in content
    assert "### user\nu1" not in content and content.endswith("u3")

    # an edited answer matches nothing: a new upstream chat with everything folded
    ask(
        [
            {"role": "user", "content": "u1"},
            {"role": "assistant", "content": "something else"},
            {"role": "user", "content": "u2"},
        ]
    )
    body = completions(fake_qwen)[-1]
    assert chats_created(fake_qwen) == 2 and body["parent_id"] is None
    assert "### assistant\nsomething else" in sent_text(body)


def test_tool_results_continue_without_chat_id(client, fake_qwen) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    fake_qwen.answer = lambda text: (
        "It is 5 degrees."
        if '"temp"' in text
        else '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )
    messages: list[dict] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.post("/api/chat/completions", json={"messages": messages, "tools": [tool]}).get_json()
    call = first["choices"][0]["message"]["tool_calls"][0]
    # the client sends the call back with its own id and re-serialised arguments
    resent = {**call, "id": "call_client_1", "function": {"name": "get_weather", "arguments": '{ "city": "Oslo" }'}}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [resent]},
        {"role": "tool", "tool_call_id": "call_client_1", "content": '{"temp": 5}'},
    ]
    second = client.post("/api/chat/completions", json={"messages": messages, "tools": [tool]}).get_json()
    assert second["choices"][0]["message"]["content"] == "It is 5 degrees."
    body = completions(fake_qwen)[-1]
    assert body["parent_id"] == first["parentId"] and chats_created(fake_qwen) == 1
    assert "Weather in Oslo?" not in sent_text(body) and '{"temp": 5}' in sent_text(body)


@pytest.fixture
def folding_client(tmp_path, fake_qwen):
    application = create_app(app_config(tmp_path, fake_qwen, QWEN_HISTORY_MATCHING=False))
    yield application.test_client()
    application.extensions["providers"].close()


def test_matching_off_always_folds_into_a_new_chat(folding_client, fake_qwen) -> None:
    client = folding_client
    client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "u1"}]})
    messages = [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "Echo: u1"},
        {"role": "user", "content": "u2"},
    ]
    r = client.post("/api/chat/completions", json={"messages": messages})
    assert r.status_code == 200
    body = completions(fake_qwen)[-1]
    assert chats_created(fake_qwen) == 2 and body["parent_id"] is None
    assert "### user\nu1" in sent_text(body) and "### assistant\nEcho: u1" in sent_text(body)
    assert ConversationPoint.select().count() == 2  # still remembered, just never looked up


def test_chat_id_requests_keep_their_behaviour_and_store_no_points(client, fake_qwen) -> None:
    first = client.post("/api/chat", json={"message": "hello"}).get_json()
    client.post("/api/chat", json={"message": "again", "chatId": first["chatId"]})
    assert ConversationPoint.select().count() == 0
    assert [sent_text(b) for b in completions(fake_qwen)] == ["hello", "again"]


def test_a_busy_upstream_chat_sends_the_second_request_to_a_new_chat(tmp_path, fake_qwen) -> None:
    """Two clients re-send the same history at once: the second finds the upstream chat still
    answering ("The chat is in progress!") and goes to a new chat with the history folded."""
    app = create_app(app_config(tmp_path, fake_qwen))
    server = LiveServer(app)
    try:
        url = server.url + "/v1/chat/completions"
        requests.post(url, json={"messages": [{"role": "user", "content": "u1"}]}, timeout=30).raise_for_status()
        history = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "Echo: u1"}]
        fake_qwen.chunk_delay = 0.05
        slow = requests.post(
            url,
            json={"stream": True, "messages": [*history, {"role": "user", "content": "words:200"}]},
            stream=True,
            timeout=30,
        )
        for line in slow.iter_lines():  # the first words: the upstream chat is now answering
            if line.startswith(b"data: ") and b'"content":"w' in line:
                break
        else:
            pytest.fail("the slow answer never started")
        busy_chat = completions(fake_qwen)[-1]["chat_id"]
        r = requests.post(url, json={"messages": [*history, {"role": "user", "content": "u2"}]}, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].endswith("u2")
        body = completions(fake_qwen)[-1]
        assert body["chat_id"] != busy_chat and body["parent_id"] is None
        assert "### assistant\nEcho: u1" in sent_text(body)
        slow.close()
    finally:
        server.stop()
        app.extensions["providers"].close()


def test_points_are_json_safe_for_unicode(client, fake_qwen) -> None:
    client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": "привет 🌍"}]})
    resent = [
        {"role": "user", "content": "привет 🌍"},
        {"role": "assistant", "content": "Echo: привет 🌍"},
        {"role": "user", "content": "ещё"},
    ]
    client.post("/api/chat/completions", json={"messages": resent})
    assert [sent_text(b) for b in completions(fake_qwen)] == ["привет 🌍", "ещё"]
    assert json.dumps(completions(fake_qwen)[-1]["parent_id"])
