"""The gateway against the 2026 chat.qwen.ai (2026 spec §1–§4), through the app.

The whole module runs the fake as the 2026 site (``use_2026_site``): the 2026 model list,
the strict 2.1 body check, ids on every delta, summary thinking. A body the 2026 front end
would not send is refused by the fake and fails the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import requests

from qwenproxy import create_app
from qwenproxy.db.models import Message
from qwenproxy.qwen.protocol import completion_body
from qwenproxy.qwen.transport import browser_headers
from tests.conftest import LiveServer, app_config
from tests.fakes import sent_token
from tests.fakes.qwen_web import MODELS_2026, FakeQwen
from tests.helpers import hang_up_after
from tests.openai_schema import sse_events, validate


@pytest.fixture(autouse=True)
def site_2026(fake_qwen: FakeQwen) -> FakeQwen:
    fake_qwen.use_2026_site()
    return fake_qwen


@pytest.fixture
def make_app(tmp_path, fake_qwen):
    made = []

    def build(**extra):
        app = create_app(
            app_config(tmp_path / f"app{len(made)}", fake_qwen, QWEN_IN_PROGRESS_BACKOFF="0.05,0.1,0.2", **extra)
        )
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["providers"].close()


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def ask(client, content="hi", **extra):
    return client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": content}], **extra})


def upstream(fake: FakeQwen, path: str = "/api/v2/chat/completions") -> list[dict]:
    return [r for r in fake.requests if r["path"] == path]


def stream_text(raw: str) -> tuple[str, str, list[dict]]:
    """(content, reasoning, error objects) of an SSE answer."""
    content = reasoning = ""
    errors = []
    for event in sse_events(raw):
        if event == "[DONE]":
            continue
        data = json.loads(event)
        if "error" in data:
            errors.append(data["error"])
            continue
        delta = data["choices"][0]["delta"] if data.get("choices") else {}
        content += delta.get("content") or ""
        reasoning += delta.get("reasoning_content") or ""
    return content, reasoning, errors


# --------------------------------------------------------------------------- §1 models


def test_models_come_from_v2_and_the_default_is_the_first_live_one(client, fake_qwen) -> None:
    ids = [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    assert ids[: len(MODELS_2026)] == MODELS_2026
    assert upstream(fake_qwen, "/api/v2/models/") and not upstream(fake_qwen, "/api/models")
    r = ask(client)
    assert r.status_code == 200 and r.get_json()["model"] == "qwen3.7-plus"
    assert upstream(fake_qwen)[-1]["json"]["model"] == "qwen3.7-plus"
    assert client.get("/api/status").get_json()["defaultModel"] == "qwen3.7-plus"


def test_without_v2_the_old_models_path_answers(make_app, fake_qwen) -> None:
    fake_qwen.models_v2 = False
    ids = [m["id"] for m in make_app().test_client().get("/v1/models").get_json()["data"]]
    assert ids[: len(MODELS_2026)] == MODELS_2026 and upstream(fake_qwen, "/api/models")


def test_a_configured_default_that_is_present_wins(make_app) -> None:
    r = ask(make_app(DEFAULT_MODEL="qwen3.6-plus").test_client())
    assert r.get_json()["model"] == "qwen3.6-plus"
    gone = ask(make_app(DEFAULT_MODEL="qwen-max-latest").test_client())
    assert gone.status_code == 200 and gone.get_json()["model"] == "qwen3.7-plus"


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("qwen-max-latest", "qwen3.7-max"),
        ("qwen3-max", "qwen3.7-max"),
        ("gpt-4o", "qwen3.7-max"),
        ("qwq-32b", "qwen3.8-max"),
    ],
)
def test_legacy_and_foreign_names_resolve_to_a_live_model(client, fake_qwen, asked, served) -> None:
    r = ask(client, model=asked)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["model"] == served  # the response says which model answered
    assert upstream(fake_qwen)[-1]["json"]["model"] == served
    assert upstream(fake_qwen, "/api/v2/chats/new")[-1]["json"]["models"] == [served]


def test_the_alias_map_is_configurable(make_app, fake_qwen) -> None:
    r = ask(make_app(MODEL_ALIASES="gpt-4o=qwen3.6-plus").test_client(), model="gpt-4o")
    assert r.get_json()["model"] == "qwen3.6-plus"


def test_a_locked_thinking_model_always_thinks_and_shows_it_only_when_asked(client, fake_qwen) -> None:
    plain = ask(client, model="qwen3.8-max")
    assert plain.status_code == 200, plain.get_json()
    features = upstream(fake_qwen)[-1]["json"]["messages"][0]["feature_config"]
    assert features["thinking_enabled"] is True and features["thinking_mode"] == "Thinking"
    message = plain.get_json()["choices"][0]["message"]
    assert message["content"] == "Echo: hi" and not message.get("reasoning_content")
    assert not fake_qwen.body_errors

    asked = ask(client, model="qwen3.8-max", reasoning_effort="high")
    assert "The user asked" in asked.get_json()["choices"][0]["message"]["reasoning_content"]
    streamed = client.post(
        "/api/chat/completions",
        json={"model": "qwen3.8-max-thinking", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    content, reasoning, errors = stream_text(streamed.get_data(as_text=True))
    assert content == "Echo: x" and "The user asked" in reasoning and not errors
    hidden = client.post(
        "/api/chat/completions",
        json={"model": "qwen3.8-max", "stream": True, "messages": [{"role": "user", "content": "y"}]},
    )
    content, reasoning, errors = stream_text(hidden.get_data(as_text=True))
    assert content == "Echo: y" and reasoning == "" and not errors
    # an unlocked model still thinks only when asked
    ask(client, model="qwen3.7-max")
    assert upstream(fake_qwen)[-1]["json"]["messages"][0]["feature_config"]["thinking_enabled"] is False


def test_forced_reasoning_can_be_shown_by_a_setting(make_app) -> None:
    r = ask(make_app(QWEN_SHOW_FORCED_REASONING=True).test_client(), model="qwen3.8-max")
    assert "The user asked" in r.get_json()["choices"][0]["message"]["reasoning_content"]


def test_invalid_input_is_a_400_that_says_what_the_site_refused(client, fake_qwen) -> None:
    assert ask(client, model="qwen3.7-max").status_code == 200  # the model list is cached now
    fake_qwen.thinking_locked_models.add("qwen3.7-max")  # the site changed its mind since
    r = ask(client, model="qwen3.7-max")
    assert r.status_code == 400
    error = r.get_json()["error"]
    validate("ErrorResponse", r.get_json())
    assert error["code"] == "upstream_invalid_input" and error["param"] == "model"
    assert "enable_thinking" in error["message"] and "qwen3.7-max" in error["message"]


# --------------------------------------------------------------------------- §2 request shape


def test_bodies_and_headers_are_the_2026_front_ends(client, fake_qwen) -> None:
    fake_qwen.require_token_cookie = True  # the Authorization header no longer authenticates
    first = ask(client, "one", model="qwen3.7-max")
    assert first.status_code == 200, first.get_json()
    second = ask(client, "two", chatId=first.get_json()["chatId"])
    assert second.status_code == 200, second.get_json()
    assert not fake_qwen.body_errors
    new_chat = upstream(fake_qwen, "/api/v2/chats/new")[-1]
    assert "title" not in new_chat["json"] and new_chat["json"]["chat_mode"] == "normal"
    assert new_chat["json"]["timestamp"] > 10**12
    assert new_chat["headers"]["referer"].endswith("/c/new-chat")
    body = upstream(fake_qwen)[-1]
    sent = body["json"]
    assert sent["version"] == "2.1" and sent["chatId"] == sent["chat_id"] == body["query"]["chat_id"]
    assert sent["parentId"] == sent["parent_id"] == first.get_json()["parentId"]
    assert sent["timestamp"] > 10**12 and sent["messages"][0]["feature_config"]["output_schema"] == "phase"
    headers = body["headers"]
    assert "authorization" not in headers and sent_token(headers)
    assert headers["version"] == "0.2.87" and headers["source"] == "web" and "bx-v" not in headers
    assert headers["accept"] == "application/json" and headers["x-accel-buffering"] == "no"  # a stream
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["x-request-id"]) and "GMT" in headers["timezone"]
    assert headers["referer"].endswith(f"/c/{sent['chat_id']}")


def test_drifting_header_values_are_settings(make_app, fake_qwen) -> None:
    app = make_app(QWEN_FRONTEND_VERSION="0.2.99", QWEN_BX_V="2.5.36", QWEN_AUTH_HEADER=True)
    assert ask(app.test_client()).status_code == 200
    headers = upstream(fake_qwen)[-1]["headers"]
    assert headers["version"] == "0.2.99" and headers["bx-v"] == "2.5.36"
    assert headers["authorization"].startswith("Bearer ")


# --------------------------------------------------------------------------- §4 walls


@pytest.mark.parametrize("mode", ["captcha_frame", "html_frame", "html_line"])
def test_a_wall_inside_a_200_stream_is_upstream_blocked_before_the_answer_starts(client, fake_qwen, mode) -> None:
    fake_qwen.hostile = mode
    r = ask(client)
    assert r.status_code == 502
    validate("ErrorResponse", r.get_json())
    error = r.get_json()["error"]
    assert error["code"] == "upstream_blocked" and "truncated" not in error["message"]
    assert "QWEN_TRANSPORT=browser" in error["message"]
    assert fake_qwen.walls == [mode]


def test_a_wall_after_the_stream_started_is_in_band(client, fake_qwen) -> None:
    fake_qwen.hostile, fake_qwen.wall_after_frames = "captcha_frame", 3
    r = client.post("/api/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    _, _, errors = stream_text(r.get_data(as_text=True))
    assert [e["code"] for e in errors] == ["upstream_blocked"]
    assert r.get_data(as_text=True).rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize("mode", ["actual_status_404", "actual_status_403"])
def test_the_status_header_wall_is_upstream_blocked(client, fake_qwen, mode) -> None:
    fake_qwen.hostile = mode
    r = ask(client)
    assert r.status_code == 502 and r.get_json()["error"]["code"] == "upstream_blocked"


# --------------------------------------------------------------------------- §3 stop, in progress


@pytest.fixture
def served(make_app) -> Iterator[LiveServer]:
    server = LiveServer(make_app())
    try:
        yield server
    finally:
        server.stop()


def test_a_client_that_leaves_gets_its_generation_stopped(served, fake_qwen) -> None:
    fake_qwen.abandon_keeps_generating = True  # the site keeps the chat busy until stopped
    first = requests.post(served.url + "/api/chat/completions", json={"messages": [{"role": "user", "content": "a"}]})
    chat_id = first.json()["chatId"]
    fake_qwen.chunk_delay = 0.05
    body = {"stream": True, "chatId": chat_id, "messages": [{"role": "user", "content": "words:200"}]}
    hang_up_after(served.url, body, words=3)
    assert fake_qwen.wait_for(lambda: fake_qwen.stop_calls, timeout=5)
    (stop,) = fake_qwen.stop_calls
    assert stop["active"] is True and stop["chat_id"] == upstream(fake_qwen)[-1]["query"]["chat_id"]
    stop_request = upstream(fake_qwen, "/api/v2/chat/completions/stop")[0]
    assert stop_request["query"]["chat_id"] == stop["chat_id"] and sent_token(stop_request["headers"])
    fake_qwen.chunk_delay = 0.0
    again = requests.post(
        served.url + "/api/chat/completions",
        json={"chatId": chat_id, "messages": [{"role": "user", "content": "b"}]},
    )
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "Echo: b"
    assert len(upstream(fake_qwen, "/api/v2/chats/new")) == 1  # the same upstream chat


def test_a_finished_answer_is_not_stopped(client, fake_qwen) -> None:
    r = client.post("/api/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert stream_text(r.get_data(as_text=True))[0] == "Echo: x"
    assert not upstream(fake_qwen, "/api/v2/chat/completions/stop")


def _abandon_upstream(fake: FakeQwen, token: str, chat_id: str, parent_id: str) -> None:
    """Someone else (another gateway, the web UI) leaves a generation running in the chat."""
    config = {"QWEN_BASE_URL": fake.url, "QWEN_USER_AGENT": "test", "QWEN_FRONTEND_VERSION": "0.2.87"}
    body = completion_body(chat_id=chat_id, model="qwen3.7-plus", content="words:500", parent_id=parent_id)
    fake.chunk_delay = 0.05
    with requests.post(
        f"{fake.url}/api/v2/chat/completions?chat_id={chat_id}",
        json=body,
        headers=browser_headers(config, token=token),
        stream=True,
        timeout=10,
    ) as response:
        next(response.iter_content(chunk_size=None))
    fake.chunk_delay = 0.0


def test_in_progress_is_stopped_and_retried_in_the_same_chat(client, fake_qwen, app_token) -> None:
    fake_qwen.abandon_keeps_generating = True
    first = ask(client, "one").get_json()
    upstream_chat = upstream(fake_qwen)[-1]["query"]["chat_id"]
    _abandon_upstream(fake_qwen, app_token(client), upstream_chat, first["parentId"])
    assert fake_qwen.wait_for(lambda: fake_qwen.aborted)
    r = ask(client, "two", chatId=first["chatId"])
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["choices"][0]["message"]["content"] == "Echo: two"
    assert [s["active"] for s in fake_qwen.stop_calls] == [True]
    assert upstream(fake_qwen)[-1]["query"]["chat_id"] == upstream_chat
    assert len(upstream(fake_qwen, "/api/v2/chats/new")) == 1


def test_a_chat_that_stays_in_progress_continues_in_a_new_chat_with_the_history(client, fake_qwen) -> None:
    first = ask(client, "one").get_json()
    upstream_chat = upstream(fake_qwen)[-1]["query"]["chat_id"]
    fake_qwen.chats[upstream_chat]["in_progress"] = True  # nothing the stop endpoint can end
    r = ask(client, "two", chatId=first["chatId"])
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["choices"][0]["message"]["content"].endswith("two")
    refused = [x for x in upstream(fake_qwen) if x["query"]["chat_id"] == upstream_chat]
    assert len(refused) == 1 + 4  # the first turn, then the try and three retries
    moved = upstream(fake_qwen)[-1]
    assert moved["query"]["chat_id"] != upstream_chat and moved["json"]["parent_id"] is None
    text = moved["json"]["messages"][0]["content"]
    assert "### user\none\n\n### assistant\nEcho: one\n" in text and text.endswith("two")  # wire/transcript.py
    assert not fake_qwen.body_errors
    # the conversation lives in the new chat from now on
    third = ask(client, "three", chatId=first["chatId"])
    assert third.status_code == 200 and upstream(fake_qwen)[-1]["query"]["chat_id"] == moved["query"]["chat_id"]
    assert upstream(fake_qwen)[-1]["json"]["parent_id"] == r.get_json()["parentId"]


# --------------------------------------------------------------------------- §3 parallel answers


def test_two_interleaved_answers_give_branch_zero_only(client, fake_qwen) -> None:
    fake_qwen.parallel_answers = "interleave"
    fake_qwen.parallel_alt_answer = lambda text: f"Backup answer to {text}"
    r = ask(client, "hello")
    assert r.get_json()["choices"][0]["message"]["content"] == "Echo: hello"
    streamed = client.post(
        "/api/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "s"}]}
    )
    content, _, errors = stream_text(streamed.get_data(as_text=True))
    assert content == "Echo: s" and not errors
    branch_zero = fake_qwen.parallel_turns[-1]["response_ids"]["0"]
    assert Message.select().where(Message.response_id == branch_zero).count() == 1


def test_an_empty_branch_zero_answers_with_the_other_and_continues_from_it(client, fake_qwen) -> None:
    fake_qwen.parallel_answers = "empty_primary"
    fake_qwen.parallel_alt_answer = lambda text: f"Backup answer to {text}"
    r = ask(client, "hello")
    assert r.status_code == 200 and r.get_json()["choices"][0]["message"]["content"] == "Backup answer to hello"
    assert r.get_json()["parentId"] == fake_qwen.parallel_turns[-1]["response_ids"]["1"]
    fake_qwen.parallel_answers = None
    again = ask(client, "next", chatId=r.get_json()["chatId"])
    assert again.status_code == 200 and upstream(fake_qwen)[-1]["json"]["parent_id"] == r.get_json()["parentId"]


def test_reading_stops_at_finished_while_the_site_keeps_the_connection_open(client, fake_qwen) -> None:
    fake_qwen.keep_open_after_finished = True
    r = ask(client, "x")
    assert r.get_json()["choices"][0]["message"]["content"] == "Echo: x"
    assert fake_qwen.wait_for(lambda: fake_qwen.held_open)
    assert fake_qwen.held_open[0]["client_closed"] is True and fake_qwen.held_open[0]["seconds"] < 10


@pytest.fixture
def app_token():
    def token_of(client) -> str:
        return client.application.extensions["account_pool"].acquire().token

    return token_of


def test_a_live_answer_of_another_request_is_never_stopped(served, fake_qwen) -> None:
    url = served.url + "/api/chat/completions"
    first = requests.post(url, json={"messages": [{"role": "user", "content": "a"}]}, timeout=30).json()
    words = " ".join(f"w{i}" for i in range(1, 61))
    fake_qwen.answer = lambda text: words if text == "slow" else "Echo: " + text.splitlines()[-1]
    fake_qwen.chunk_delay = 0.02
    slow = requests.post(
        url,
        json={"stream": True, "chatId": first["chatId"], "messages": [{"role": "user", "content": "slow"}]},
        stream=True,
        timeout=30,
    )
    lines = slow.iter_lines()
    for line in lines:  # the first words: the upstream chat is answering for this request
        if line.startswith(b"data: ") and b'"content":"w' in line:
            break
    busy = upstream(fake_qwen)[-1]["query"]["chat_id"]
    r = requests.post(url, json={"chatId": first["chatId"], "messages": [{"role": "user", "content": "b"}]}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Echo: b"
    moved = upstream(fake_qwen)[-1]
    assert moved["query"]["chat_id"] != busy and "### user\na\n" in moved["json"]["messages"][0]["content"]
    rest = b"".join(lines)
    assert b"w60" in rest and b'"error"' not in rest  # the first answer ran to its end
    assert not fake_qwen.stop_calls
