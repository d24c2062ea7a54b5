"""Routes through the Flask client against the fake chat.qwen.ai (a real server)."""

from __future__ import annotations

import json

import pytest

from qwenproxy.db.models import Chat, Message
from tests.openai_schema import sse_events, validate


def _ask(client, content="hello", **extra):
    body = {"model": "qwen3-max", "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/api/chat/completions", json=body)


def test_completion_non_stream_matches_openai_schema(client, fake_qwen) -> None:
    r = _ask(client, "привет 🌍")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "Echo: привет 🌍"
    assert body["model"] == "qwen3-max"
    usage = body["usage"]
    assert (
        usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    assert body["chatId"] and body["parentId"] == body["id"]
    assert r.headers["X-Chat-Id"] == body["chatId"]


def test_completion_stream_chunks_match_openai_schema(client) -> None:
    r = _ask(client, "words:12", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    events = sse_events(r.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == " ".join(f"w{i}" for i in range(1, 13))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 12
    assert all(c["chatId"] == chunks[0]["chatId"] for c in chunks)


def test_two_turns_continue_the_upstream_conversation(client, fake_qwen) -> None:
    first = _ask(client, "one").get_json()
    second = _ask(client, "two", chatId=first["chatId"]).get_json()
    assert second["chatId"] == first["chatId"]
    completions = [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
    assert len(completions) == 2
    assert completions[0]["json"]["parent_id"] is None
    assert completions[1]["json"]["parent_id"] == first["parentId"]
    assert completions[1]["json"]["chat_id"] == completions[0]["json"]["chat_id"]
    assert len([r for r in fake_qwen.requests if r["path"] == "/api/v2/chats/new"]) == 1
    stored = Message.select().join(Chat).where(Chat.id == first["chatId"]).order_by(Message.id)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "one"),
        ("assistant", "Echo: one"),
        ("user", "two"),
        ("assistant", "Echo: two"),
    ]
    assistant = next(m for m in stored if m.role == "assistant")
    assert assistant.response_id == first["parentId"] and assistant.completion_tokens > 0
    assert assistant.model == "qwen3-max" and assistant.provider == "qwen"


def test_with_chat_id_only_the_last_user_turn_and_first_system_message_go_upstream(client, fake_qwen) -> None:
    first = _ask(client, "old").get_json()
    r = client.post(
        "/api/chat/completions",
        json={
            "chatId": first["chatId"],
            "messages": [
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": "old"},
                {"role": "assistant", "content": "old answer"},
                {"role": "user", "content": "new"},
            ],
        },
    )
    assert r.status_code == 200
    sent = [x for x in fake_qwen.requests if x["path"] == "/api/v2/chat/completions"][-1]["json"]
    assert len(sent["messages"]) == 1 and sent["messages"][0]["content"] == "new"
    assert sent["system_message"] == "Be brief"
    assert sent["parent_id"] == first["parentId"]
    assert sent["model"] == fake_qwen.models[0]  # the default model: the first of the live list


def test_simple_chat_format(client, fake_qwen) -> None:
    r = client.post("/api/chat", json={"message": "hi", "model": "qwen-max"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["model"] == "qwen3-max"  # alias resolved (seed §6.2)
    assert body["choices"][0]["message"]["content"] == "Echo: hi"
    assert body["response_id"] == body["parentId"] == body["id"]
    again = client.post("/api/chat", json={"message": "next", "chatId": body["chatId"], "parentId": body["parentId"]})
    assert again.get_json()["chatId"] == body["chatId"]
    parts = client.post("/api/chat", json={"message": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    assert parts.get_json()["choices"][0]["message"]["content"] == "Echo: ab"
    stream = client.post("/api/chat", json={"message": "s", "stream": True})
    assert sse_events(stream.get_data(as_text=True))[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/api/chat/completions", {}, 400, "messages"),
        ("/api/chat/completions", {"messages": []}, 400, "messages"),
        ("/api/chat/completions", {"messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
        ("/api/chat/completions", {"messages": "hi"}, 400, "messages"),
        ("/api/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ("/api/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ("/api/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
        (
            "/api/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "temperature": 9},
            400,
            "temperature",
        ),
        ("/api/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
        ("/api/chat", {}, 400, "message"),
        ("/api/chat", {"message": 5}, 400, "message"),
        ("/api/chat", {"message": [{"kind": "text"}]}, 400, "message"),
    ],
)
def test_bad_input_is_a_400_in_openai_shape(client, path, body, status, param) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status
    validate("ErrorResponse", r.get_json())
    assert r.get_json()["error"]["param"] == param


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"", b"\xff\xfe\x00"])
def test_malformed_bodies_are_400_never_500(client, raw) -> None:
    r = client.post("/api/chat/completions", data=raw, content_type="application/json")
    assert r.status_code == 400
    validate("ErrorResponse", r.get_json())


def test_unknown_routes_and_methods(client) -> None:
    r = client.get("/api/nope")
    assert r.status_code == 404
    validate("ErrorResponse", r.get_json())
    r = client.get("/api/chat/completions")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]
    validate("ErrorResponse", r.get_json())


def test_path_aliases(client) -> None:
    for path in ("/api/models", "/api/v1/models", "/v1/models", "/api/v2/models"):
        r = client.get(path)
        assert r.status_code == 200, path
        validate("ListModelsResponse", r.get_json())


def test_routes_answer_with_a_trailing_slash_without_a_redirect(client) -> None:
    user = [{"role": "user", "content": "hi"}]
    r = client.post("/api/chat/", json={"message": "hi"})  # seed 000's own fetch('/api/chat/')
    assert r.status_code == 200 and r.get_json()["choices"][0]["message"]["content"] == "Echo: hi"
    chat_id = r.get_json()["chatId"]
    for method, path, body in [
        ("POST", "/v1/chat/completions/", {"messages": user}),
        ("POST", "/api/v1/completions/", {"prompt": "hi"}),
        ("GET", "/v1/models/", None),
        ("GET", f"/api/chats/{chat_id}/", None),
        ("GET", "/health/ready/", None),
    ]:
        r = client.open(path, method=method, json=body)
        assert r.status_code == 200, (path, r.status_code)
    r = client.get("/api/chat/completions/")
    assert r.status_code == 405 and r.get_json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("captcha", 502, "upstream_blocked"),
        ("waf", 502, "upstream_blocked"),
        ("actual_status_404", 502, "upstream_blocked"),  # 2026 §4: a wall, not a status quirk
        ("actual_status_403", 502, "upstream_blocked"),
    ],
)
def test_hostile_upstream_answers_map_to_errors(client, fake_qwen, mode, status, code) -> None:
    fake_qwen.hostile = mode
    r = _ask(client)
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code
    assert "QWEN_TRANSPORT=browser" in r.get_json()["error"]["message"]  # says what to do
    validate("ErrorResponse", r.get_json())


def test_rate_limit_envelope_is_429_with_retry_after(client, fake_qwen, app) -> None:
    token = app.extensions["account_pool"].acquire().token
    fake_qwen.quota[token] = 0
    r = _ask(client)
    assert r.status_code == 429
    assert abs(int(r.headers["Retry-After"]) - fake_qwen.rate_limit_hours * 3600) <= 5
    assert r.get_json()["error"]["type"] == "rate_limit_error"
    status = client.get("/api/status").get_json()
    assert status["accounts"][0]["status"] == "WAIT"


def test_expired_token_is_503_and_marks_the_account(client, fake_qwen, app) -> None:
    token = app.extensions["account_pool"].acquire().token
    fake_qwen.revoked.add(token)
    r = _ask(client)
    assert r.status_code == 503
    assert "relogin" in r.get_json()["error"]["message"]
    assert client.get("/api/status").get_json()["accounts"][0]["status"] == "INVALID"


def test_unknown_model_maps_to_default_and_upstream_not_found_is_404(client, fake_qwen) -> None:
    r = _ask(client, model="no-such-model")
    assert r.status_code == 200 and r.get_json()["model"] == fake_qwen.models[0]  # the live default
    fake_qwen.models.remove("qwen-max-latest")  # listed locally but gone upstream
    r = client.post(
        "/api/chat/completions", json={"model": "qwen-max-latest", "messages": [{"role": "user", "content": "x"}]}
    )
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "model_not_found"


def test_truncated_stream_reports_in_band_and_keeps_partial(client, fake_qwen) -> None:
    fake_qwen.hostile = "truncate"
    r = _ask(client, "words:20", stream=True)
    assert r.status_code == 200
    events = sse_events(r.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    validate("ErrorResponse", error)
    assert error["error"]["code"] == "upstream_truncated"
    partial = Message.select().where(Message.role == "assistant").get()
    assert partial.status == "partial" and partial.content.startswith("w1")


def test_in_stream_error_is_reported_in_band(client, fake_qwen) -> None:
    fake_qwen.hostile = "stream_error"
    events = sse_events(_ask(client, "words:10", stream=True).get_data(as_text=True))
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2])


def test_early_error_in_a_stream_is_a_plain_json_error(client, fake_qwen) -> None:
    fake_qwen.hostile = "captcha"
    r = _ask(client, stream=True)
    assert r.status_code == 502 and r.mimetype == "application/json"


def test_api_keys(client, app, tmp_path) -> None:
    keys = tmp_path / "Authorization.txt"
    assert client.get("/api/models").status_code == 200  # only the commented template: auth disabled
    keys.write_text("# comment\n\n  key-one  \nkey-two\n", encoding="utf-8")
    for header in (None, "key-one", "Bearer nope", "Basic key-one"):
        r = client.get("/api/models", headers={"Authorization": header} if header else {})
        assert r.status_code == 401, header
        validate("ErrorResponse", r.get_json())
    assert client.get("/api/models", headers={"Authorization": "Bearer key-one"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer key-two"}).status_code == 200
    keys.write_text("# only comments\n", encoding="utf-8")
    assert client.get("/api/models").status_code == 200


def test_models_come_from_upstream_when_reachable(client, fake_qwen) -> None:
    ids = [m["id"] for m in client.get("/api/models").get_json()["data"]]
    assert ids[: len(fake_qwen.models)] == fake_qwen.models


def test_models_fall_back_to_the_file(tmp_path, fake_qwen) -> None:
    from qwenproxy import create_app
    from tests.conftest import app_config

    models = tmp_path / "models.txt"
    models.write_text("# mine\nqwen3-max\n\nqwq-32b\n", encoding="utf-8")
    app = create_app(app_config(tmp_path, fake_qwen, QWEN_BASE_URL="http://127.0.0.1:9", MODELS_FILE=str(models)))
    ids = [m["id"] for m in app.test_client().get("/api/models").get_json()["data"]]
    assert ids == ["qwen3-max", "qwq-32b"]


def test_pings_while_the_upstream_is_silent(tmp_path, fake_qwen) -> None:
    from qwenproxy import create_app
    from tests.conftest import app_config

    app = create_app(app_config(tmp_path, fake_qwen, PING_INTERVAL=0.05))
    fake_qwen.chunk_delay = 0.3
    r = app.test_client().post(
        "/api/chat/completions", json={"stream": True, "messages": [{"role": "user", "content": "words:3"}]}
    )
    raw = r.get_data(as_text=True)
    assert ": ping\n\n" in raw
    assert raw.rstrip().endswith("data: [DONE]")
    assert (
        "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in sse_events(raw)[:-1]) == "w1 w2 w3"
    )
