"""The seed's Dual AI Chat routes and GigaChat through the OpenAI routes, end to end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import requests

from qwenproxy import create_app
from qwenproxy.db.models import Chat, Message
from qwenproxy.events import EventStream, Finished, ResponseStarted, TextDelta, Usage
from qwenproxy.providers.base import ChatRequest, ModelCard, Provider
from tests.conftest import ROOT, Gunicorn
from tests.fakes.gigachat import FakeGigaChat
from tests.fakes.server import BackgroundServer
from tests.openai_schema import validate


class StubLocalCoder(Provider):
    """Stands in for the local coder provider (its own issue) so history can be shared."""

    name = "local"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    def owns(self, model: str) -> bool:
        return model == "qwen2.5-coder-local"

    def resolve_model(self, model: str | None) -> str:
        return "qwen2.5-coder-local"

    def list_models(self) -> list[ModelCard]:
        return []

    def open_stream(self, request: ChatRequest) -> EventStream:
        self.requests.append(request)
        answer = f"print({request.messages[-1]['content']!r})"
        events = [
            ResponseStarted(),
            TextDelta(answer),
            Usage(3, 5, 8, raw={"generation_time": 0.25, "tokens_generated": 5}),
            Finished("stop"),
        ]
        return EventStream(iter(events))

    def status(self) -> dict:
        return {"available": True, "model_loaded": True, "status": "healthy"}


@pytest.fixture
def fake() -> Iterator[FakeGigaChat]:
    with FakeGigaChat() as server:
        yield server


def make_app(tmp_path, fake: FakeGigaChat | None, **config):
    settings = {
        "TESTING": True,
        "SESSION_DIR": str(tmp_path),
        "LOGS_DIR": str(tmp_path / "logs"),
        "API_KEYS_FILE": str(tmp_path / "no-keys.txt"),
        "QWEN_BASE_URL": "http://127.0.0.1:9",
        "GIGACHAT_VERIFY_SSL_CERTS": False,
        "GIGACHAT_TIMEOUT": 5.0,
        "LOG_LEVEL": "WARNING",
    }
    if fake is not None:
        settings.update(
            GIGACHAT_CREDENTIALS=fake.credentials, GIGACHAT_BASE_URL=fake.url, GIGACHAT_AUTH_URL=fake.auth_url
        )
    settings.update(config)
    return create_app(settings)


@pytest.fixture
def dual_app(tmp_path, fake):
    app = make_app(tmp_path, fake)
    yield app
    app.extensions["providers"].close()


@pytest.fixture
def dual_client(dual_app):
    return dual_app.test_client()


@pytest.fixture
def local(dual_app) -> StubLocalCoder:
    stub = StubLocalCoder()
    dual_app.extensions["providers"].register(stub)
    return stub


# --- the four seed routes, exact JSON ---------------------------------------------------


def test_gigachat_route_is_byte_compatible(dual_client, fake):
    response = dual_client.get("/gigachat", query_string={"query": "Привет", "session_id": "s1"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.data == '{"response":"Echo: Привет"}'.encode()
    # the README's `message` is a synonym of `query`
    response = dual_client.get("/gigachat", query_string={"message": "hi", "session_id": "s1"})
    assert response.get_json() == {"response": "Echo: hi"}
    assert fake.chat_requests[-1]["model"] == "GigaChat"


def test_history_route_exact_keys_oldest_first(dual_client):
    assert dual_client.get("/history?session_id=nobody").data == b'{"history":[]}'
    for text in ("one", "two"):
        dual_client.get("/gigachat", query_string={"query": text, "session_id": "s2"})
    response = dual_client.get("/history?session_id=s2")
    assert response.status_code == 200
    assert list(response.get_json()) == ["history"]
    assert response.get_json()["history"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Echo: one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "Echo: two"},
    ]
    assert all(list(item) == ["role", "content"] for item in response.get_json()["history"])


def test_qwen_route_and_status_exact_keys(dual_client, local):
    response = dual_client.get("/qwen", query_string={"query": "x", "session_id": "s3", "max_tokens": 64})
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["response", "generation_time", "tokens_generated"]
    assert body == {"response": "print('x')", "generation_time": 0.25, "tokens_generated": 5}
    request = local.requests[-1]
    assert request.max_tokens == 64 and request.temperature == 0.4 and request.top_p == 0.9
    assert request.options == {"top_k": 60, "repetition_penalty": 1.1, "add_bos": True}
    status = dual_client.get("/qwen/status")
    assert status.status_code == 200
    assert status.data == b'{"available":true,"model_loaded":true,"status":"healthy"}'


def test_qwen_without_the_worker_is_a_clear_503(dual_client):
    response = dual_client.get("/qwen", query_string={"query": "x", "session_id": "s4"})
    assert response.status_code == 503
    body = response.get_json()
    assert "python -m workers.inference -m PATH" in body["error"]["message"]
    assert "LOCAL_MODEL_PATH" in body["detail"]
    status = dual_client.get("/qwen/status")
    assert status.status_code == 200
    assert list(status.get_json()) == ["available", "model_loaded", "status"]
    assert status.get_json()["available"] is False and status.get_json()["model_loaded"] is False
    assert "workers.inference" in status.get_json()["status"]
    assert dual_client.get("/history?session_id=s4").get_json() == {"history": []}


def test_missing_parameters_are_fastapi_422(dual_client):
    response = dual_client.get("/gigachat?session_id=s")
    assert response.status_code == 422
    assert response.get_json()["detail"] == [
        {"type": "missing", "loc": ["query", "query"], "msg": "Field required", "input": None}
    ]
    assert dual_client.get("/gigachat?query=x").get_json()["detail"][0]["loc"] == ["query", "session_id"]
    assert dual_client.get("/history").status_code == 422
    assert dual_client.get("/qwen?query=x&session_id=s&max_tokens=lots").status_code == 422
    assert dual_client.get("/history?session_id=s&bot=other").status_code == 422


# --- history shared by both bots --------------------------------------------------------


def test_history_is_shared_across_bots_with_the_bot_recorded(dual_app, dual_client, fake, local):
    dual_client.get("/gigachat", query_string={"query": "from giga", "session_id": "mix"})
    dual_client.get("/qwen", query_string={"query": "from qwen", "session_id": "mix"})
    dual_client.get("/gigachat", query_string={"query": "again", "session_id": "mix"})
    # each bot saw the other's turns
    assert [m["content"] for m in local.requests[-1].messages] == ["from giga", "Echo: from giga", "from qwen"]
    assert [m["content"] for m in fake.chat_requests[-1]["messages"]] == [
        "from giga",
        "Echo: from giga",
        "from qwen",
        "print('from qwen')",
        "again",
    ]
    everything = dual_client.get("/history?session_id=mix").get_json()["history"]
    assert [m["content"] for m in everything] == [
        "from giga",
        "Echo: from giga",
        "from qwen",
        "print('from qwen')",
        "again",
        "Echo: again",
    ]
    only_qwen = dual_client.get("/history?session_id=mix&bot=qwen").get_json()["history"]
    assert only_qwen == [
        {"role": "user", "content": "from qwen"},
        {"role": "assistant", "content": "print('from qwen')"},
    ]
    with dual_app.app_context():
        chat = Chat.get(Chat.session_id == "mix")
        rows = list(Message.select().where(Message.chat == chat).order_by(Message.id))
        assert [r.bot for r in rows] == ["gigachat", "gigachat", "qwen", "qwen", "gigachat", "gigachat"]
        assert [r.provider for r in rows][2:4] == ["local", "local"]
    assert dual_client.get("/history?session_id=other").get_json() == {"history": []}


def test_prompt_is_trimmed_but_history_is_kept(tmp_path, fake):
    app = make_app(tmp_path, fake, DUAL_HISTORY_TURNS=4, DEFAULT_SYSTEM_PROMPT="Ты - эксперт по Python.")
    client = app.test_client()
    try:
        for i in range(4):
            client.get("/gigachat", query_string={"query": f"q{i}", "session_id": "long"})
        sent = fake.chat_requests[-1]["messages"]
        # the system prompt (the seed forgot it for GigaChat), the last 4 stored, the new one
        assert sent[0] == {"role": "system", "content": "Ты - эксперт по Python."}
        assert [m["content"] for m in sent[1:]] == ["q1", "Echo: q1", "q2", "Echo: q2", "q3"]
        assert len(client.get("/history?session_id=long").get_json()["history"]) == 8
        stub = StubLocalCoder()
        app.extensions["providers"].register(stub)
        client.get("/qwen", query_string={"query": "code", "session_id": "long"})
        assert stub.requests[-1].messages[0] == {"role": "system", "content": "Ты - эксперт по Python."}
    finally:
        app.extensions["providers"].close()


def test_failed_exchange_is_not_in_history(dual_client, fake):
    dual_client.get("/gigachat", query_string={"query": "ok", "session_id": "f"})
    fake.fail_next(500)
    response = dual_client.get("/gigachat", query_string={"query": "boom", "session_id": "f"})
    assert response.status_code == 502 and "error" in response.get_json()
    fake.fail_next(429, retry_after=3)
    response = dual_client.get("/gigachat", query_string={"query": "slow down", "session_id": "f"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    history = dual_client.get("/history?session_id=f").get_json()["history"]
    assert [m["content"] for m in history] == ["ok", "Echo: ok"]
    dual_client.get("/gigachat", query_string={"query": "next", "session_id": "f"})
    assert [m["content"] for m in fake.chat_requests[-1]["messages"]] == ["ok", "Echo: ok", "next"]


def test_gigachat_route_streams_sse(dual_client, fake):
    fake.reply = "alpha beta gamma"
    response = dual_client.get("/gigachat", query_string={"query": "s", "session_id": "sse", "stream": "true"})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = [line for line in response.get_data(as_text=True).split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1] if e.startswith("data: ")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "alpha beta gamma"
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert dual_client.get("/history?session_id=sse").get_json()["history"][-1] == {
        "role": "assistant",
        "content": "alpha beta gamma",
    }


# --- credentials ------------------------------------------------------------------------


def test_app_starts_without_credentials_and_names_the_variable(tmp_path):
    app = make_app(tmp_path, None)
    client = app.test_client()
    response = client.get("/gigachat", query_string={"query": "x", "session_id": "n"})
    assert response.status_code == 503
    assert "GIGACHAT_CREDENTIALS" in response.get_json()["detail"]
    response = client.post(
        "/api/chat/completions", json={"model": "GigaChat", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 503 and "GIGACHAT_CREDENTIALS" in response.get_json()["error"]["message"]
    assert client.get("/history?session_id=n").get_json() == {"history": []}


def test_seed_api_key_and_wrong_credentials(tmp_path, fake):
    app = make_app(tmp_path, None, API_KEY="d3Jvbmc6a2V5", GIGACHAT_BASE_URL=fake.url, GIGACHAT_AUTH_URL=fake.auth_url)
    response = app.test_client().get("/gigachat", query_string={"query": "x", "session_id": "w"})
    assert response.status_code == 401
    assert "API_KEY" in response.get_json()["detail"]
    assert fake.oauth_calls == 0


# --- OpenAI routes ------------------------------------------------------------------------


@pytest.fixture
def gateway(dual_app):
    server = BackgroundServer(dual_app, name="app")
    yield server.url + "/v1"
    server.stop()


def test_openai_client_streams_gigachat(gateway, fake):
    fake.reply = "Раз, два, три"
    client = openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="GigaChat-2-Max",
        messages=[{"role": "system", "content": "Считай"}, {"role": "user", "content": "до трёх"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Раз, два, три"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    assert fake.chat_requests[-1]["model"] == "GigaChat-2-Max"
    assert fake.chat_requests[-1]["messages"][0] == {"role": "system", "content": "Считай"}
    completion = client.chat.completions.create(model="GigaChat", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.content == "Раз, два, три"
    validate("CreateChatCompletionResponse", completion.model_dump(exclude_none=False, exclude_unset=True))
    assert fake.oauth_calls == 1  # one long-lived SDK client for the app
    ids = [m.id for m in client.models.list().data]
    assert {"GigaChat", "GigaChat-2", "GigaChat-2-Pro", "GigaChat-2-Max"} <= set(ids)


def test_openai_client_sees_gigachat_errors(gateway, fake):
    client = openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "x"}]
    fake.fail_next(402)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="GigaChat", messages=messages)
    assert info.value.status_code == 402
    fake.fail_next(429, retry_after=9)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="GigaChat", messages=messages, stream=True)
    assert info.value.response.headers["retry-after"] == "9"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="GigaChat-Unknown", messages=messages)
    fake.fail_next(422, "Invalid params: repetition_penalty must be in range (0, +inf)")
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="GigaChat", messages=messages)
    fake.fail_next(401, count=2)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="GigaChat", messages=messages)


def test_token_refreshed_once_after_expiry_across_requests(dual_client, fake):
    for i in range(3):
        assert dual_client.get("/gigachat", query_string={"query": f"a{i}", "session_id": "t"}).status_code == 200
    assert fake.oauth_calls == 1
    fake.expire_tokens()  # the token went stale: one 401, one refresh, one retry
    for i in range(3):
        assert dual_client.get("/gigachat", query_string={"query": f"b{i}", "session_id": "t"}).status_code == 200
    assert fake.oauth_calls == 2
    assert len(fake.chat_requests) == 7


def test_gigachat_under_gunicorn_gevent(tmp_path, fake):
    fake.reply = "a b c d e"
    fake.chunk_delay = 0.2  # one stream takes about a second
    env = {
        "SESSION_DIR": str(tmp_path / "session"),
        "API_KEYS_FILE": str(tmp_path / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
        "QWEN_BASE_URL": "http://127.0.0.1:9",
        "GIGACHAT_CREDENTIALS": fake.credentials,
        "GIGACHAT_BASE_URL": fake.url,
        "GIGACHAT_AUTH_URL": fake.auth_url,
    }
    server = Gunicorn(env, workers=1)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        texts: list[str] = []

        def one_stream() -> None:
            stream = client.chat.completions.create(
                model="GigaChat-2", messages=[{"role": "user", "content": "x"}], stream=True
            )
            texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

        started = time.monotonic()
        threads = [threading.Thread(target=one_stream) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        # one gevent worker interleaves the three upstream streams
        assert time.monotonic() - started < 2.5
        assert texts == ["a b c d e"] * 3
        seed = requests.get(server.url + "/gigachat", params={"query": "x", "session_id": "g"}, timeout=20)
        assert seed.content == b'{"response":"a b c d e"}'
        assert fake.oauth_calls == 1
    finally:
        server.stop()


# --- routing by model name ---------------------------------------------------------------


def test_gigachat_and_local_requests_never_fetch_qwens_model_list(tmp_path, fake) -> None:
    """Routing asks each provider's own names: a GigaChat or local request must not make
    the Qwen provider fetch chat.qwen.ai's model list (a fake Qwen counts the calls)."""
    from tests.fakes.qwen_web import FakeQwen

    qwen = FakeQwen().start()
    try:
        app = make_app(tmp_path, fake, QWEN_BASE_URL=qwen.url, QWEN_TOKEN=qwen.make_token(), QWEN_TRANSPORT="direct")
        app.extensions["providers"].register(StubLocalCoder())
        client = app.test_client()
        for model in ("GigaChat-2-Max", "qwen2.5-coder-local"):
            answer = client.post(
                "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert answer.status_code == 200, answer.get_json()
            assert answer.get_json()["model"] == model
        assert [r["path"] for r in qwen.requests] == []
        # a Qwen request does fetch it (the check above could see one)
        answer = client.post(
            "/v1/chat/completions", json={"model": "qwen-max-latest", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert answer.status_code == 200, answer.get_json()
        assert "/api/v2/models/" in [r["path"] for r in qwen.requests]  # the 2026 list path
        app.extensions["providers"].close()
    finally:
        qwen.stop()
