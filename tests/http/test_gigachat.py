"""The GigaChat provider against the fake GigaChat server (and the fake against the spec)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from types import SimpleNamespace

import httpx
import pytest

from qwenproxy.errors import (
    BadRequest,
    ModelNotFound,
    PaymentRequired,
    RateLimited,
    Unauthorized,
    UpstreamError,
    UpstreamUnavailable,
)
from qwenproxy.events import Finished, ResponseStarted, TextDelta, Usage
from qwenproxy.providers.base import ChatRequest
from qwenproxy.providers.gigachat import FALLBACK_MODELS, GigaChatProvider
from tests.fakes.gigachat import FakeGigaChat


@pytest.fixture
def fake():
    with FakeGigaChat() as server:
        yield server


def make_provider(fake: FakeGigaChat, **overrides) -> GigaChatProvider:
    settings = {
        "credentials": fake.credentials,
        "base_url": fake.url,
        "auth_url": fake.auth_url,
        "verify_ssl_certs": False,
        "timeout": 5.0,
    }
    settings.update(overrides)
    return GigaChatProvider(**settings)


@pytest.fixture
def provider(fake):
    p = make_provider(fake)
    yield p
    p.close()


def ask(provider: GigaChatProvider, text: str = "Hello", **kw) -> list:
    request = ChatRequest(model=kw.pop("model", "GigaChat"), messages=[{"role": "user", "content": text}], **kw)
    return list(provider.open_stream(request))


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --- the fake follows the wire protocol (spec §2) -------------------------------------


def oauth(fake: FakeGigaChat, *, key: str | None = None, rquid: str | None = "auto", scope="GIGACHAT_API_PERS"):
    headers = {"Authorization": f"Basic {key or fake.credentials}"}
    if rquid == "auto":
        headers["RqUID"] = str(uuid.uuid4())
    elif rquid is not None:
        headers["RqUID"] = rquid
    data = {"scope": scope} if scope is not None else {}
    return httpx.post(fake.auth_url, headers=headers, data=data)


def test_fake_oauth_checks_rquid_basic_key_and_scope(fake):
    assert oauth(fake, rquid=None).status_code == 400
    assert oauth(fake, rquid="not-a-uuid").status_code == 400
    bad = oauth(fake, key="%%%not base64%%%")
    assert bad.status_code == 400 and bad.json() == {"code": 4, "message": "Can't decode 'Authorization' header"}
    wrong = oauth(fake, key=base64.b64encode(b"someone:else").decode())
    assert wrong.status_code == 401 and wrong.json()["code"] == 6
    assert oauth(fake, scope=None).json() == {"code": 5, "message": "scope is empty"}
    assert oauth(fake, scope="GIGACHAT_API_CORP").json()["code"] == 7
    assert fake.oauth_calls == 0

    ok = oauth(fake)
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {"access_token", "expires_at"}
    now_ms = time.time() * 1000
    # milliseconds, 30 minutes ahead
    assert now_ms + 29 * 60_000 < body["expires_at"] < now_ms + 31 * 60_000
    assert fake.oauth_calls == 1


def test_fake_rejects_stale_tokens_and_streams_like_gigachat(fake):
    token = oauth(fake).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    payload = {"model": "GigaChat", "messages": [{"role": "user", "content": "раз два"}], "stream": True}
    with httpx.stream("POST", f"{fake.url}/chat/completions", json=payload, headers=auth) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        lines = list(response.iter_lines())
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in events[:-1]]
    assert all(c["object"] == "chat.completion" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("usage" not in c for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"][0]["delta"]["content"] == "" and last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    assert chunks[0]["model"] == "GigaChat:2.0.28.2"
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Echo: раз два"

    fake.expire_tokens()
    stale = httpx.post(f"{fake.url}/chat/completions", json=payload, headers=auth)
    assert stale.status_code == 401
    assert stale.json() == {"status": 401, "message": "Token has expired"}
    models = httpx.get(f"{fake.url}/models", headers={"Authorization": f"Bearer {oauth(fake).json()['access_token']}"})
    assert models.json()["object"] == "list" and models.json()["data"][0]["id"] == "GigaChat"


# --- provider: chat, stream, token lifecycle -----------------------------------------


def test_chat_non_stream(provider, fake):
    events = ask(provider, "Привет", temperature=0, max_tokens=50)
    assert isinstance(events[0], ResponseStarted)
    assert text_of(events) == "Echo: Привет"
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.completion_tokens == 3 and usage.raw["precached_prompt_tokens"] == 0
    assert events[-1] == Finished("stop")
    sent = fake.chat_requests[-1]
    assert sent["model"] == "GigaChat"
    assert sent["messages"] == [{"role": "user", "content": "Привет"}]
    assert sent["temperature"] == 0.001  # OpenAI's 0 -> GigaChat's deterministic mode
    assert sent["max_tokens"] == 50 and "stream" not in sent
    headers = fake.requests_to("/chat/completions")[-1].headers
    assert headers["Authorization"].startswith("Bearer ")
    assert headers["User-Agent"] == "GigaChat-python-lib"


def test_stream_is_incremental_with_usage_last(provider, fake):
    fake.reply = "one two three four"
    stream = provider.open_stream(
        ChatRequest(
            model="GigaChat-2-Max",
            stream=True,
            messages=[{"role": "system", "content": "Be brief"}, {"role": "user", "content": "count"}],
        )
    )
    events = list(stream)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["one", " two", " three", " four"]
    assert isinstance(events[-2], Usage) and events[-1] == Finished("stop")
    assert fake.chat_requests[-1]["stream"] is True
    assert fake.chat_requests[-1]["model"] == "GigaChat-2-Max"
    assert fake.requests_to("/chat/completions")[-1].headers["Accept"] == "text/event-stream"
    assert stream.info["upstream_request_id"]


def test_max_tokens_gives_length(provider, fake):
    fake.reply = "a b c d e f g"
    events = ask(provider, max_tokens=3, stream=True)
    assert text_of(events) == "a b c" and events[-1] == Finished("length")


def test_one_oauth_call_for_many_requests(provider, fake):
    for _ in range(5):
        ask(provider)
    ask(provider, stream=True)
    provider.list_models()
    assert fake.oauth_calls == 1
    # every OAuth call carried a fresh RqUID and the configured scope
    grant = fake.requests_to("/oauth")[0]
    assert grant.form == {"scope": "GIGACHAT_API_PERS"}


def test_token_refreshed_before_expiry_without_a_401(fake):
    fake.token_ttl_ms = 1500
    provider = make_provider(fake, token_expiry_buffer_ms=1000)  # usable for ~0.5 s
    try:
        ask(provider)
        ask(provider)
        assert fake.oauth_calls == 1
        time.sleep(0.6)
        ask(provider)
        ask(provider, stream=True)
        assert fake.oauth_calls == 2
        statuses = [r.path for r in fake.requests]
        assert statuses.count("/api/v2/oauth") == 2
        assert len(fake.chat_requests) == 4  # no 401-and-retry round trips
    finally:
        provider.close()


def test_token_refreshed_once_on_401(provider, fake):
    ask(provider)
    fake.expire_tokens()  # the server forgets the token before its expires_at
    assert text_of(ask(provider, "again")) == "Echo: again"
    assert fake.oauth_calls == 2
    fake.expire_tokens()
    assert text_of(ask(provider, "streamed", stream=True)) == "Echo: streamed"
    assert fake.oauth_calls == 3
    ask(provider)
    assert fake.oauth_calls == 3


def test_settings_come_from_config_not_the_environment(fake, monkeypatch):
    monkeypatch.setenv("GIGACHAT_ACCESS_TOKEN", "leaked-token")
    monkeypatch.setenv("GIGACHAT_BASE_URL", "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv("GIGACHAT_MODEL", "GigaChat-Leaked")
    monkeypatch.setenv("GIGACHAT_TOKEN_EXPIRY_BUFFER_MS", "999999999")
    provider = make_provider(fake)
    try:
        assert text_of(ask(provider)) == "Echo: Hello"
        ask(provider)
        assert fake.oauth_calls == 1
        assert all("leaked" not in r.headers.get("Authorization", "") for r in fake.requests)
        assert provider.resolve_model(None) == "GigaChat"
    finally:
        provider.close()


def test_from_app_reads_the_seed_api_key_as_fallback(fake):
    app = SimpleNamespace(
        config={
            "API_KEY": fake.credentials,
            "GIGACHAT_BASE_URL": fake.url,
            "GIGACHAT_AUTH_URL": fake.auth_url,
            "GIGACHAT_VERIFY_SSL_CERTS": False,
            "GIGACHAT_SCOPE": "GIGACHAT_API_PERS",
        }
    )
    provider = GigaChatProvider.from_app(app)
    try:
        assert provider.credentials_variable == "API_KEY"
        assert text_of(ask(provider)) == "Echo: Hello"
    finally:
        provider.close()
    app.config["GIGACHAT_CREDENTIALS"] = "other"
    assert GigaChatProvider.from_app(app).credentials_variable == "GIGACHAT_CREDENTIALS"


# --- errors ---------------------------------------------------------------------------


def test_missing_credentials_name_the_variable(fake):
    provider = make_provider(fake, credentials=None)
    with pytest.raises(UpstreamUnavailable) as info:
        ask(provider)
    assert info.value.status == 503 and "GIGACHAT_CREDENTIALS" in info.value.message
    assert provider.list_models() == []
    assert fake.requests == []


def test_wrong_credentials_are_a_clear_401(fake):
    provider = make_provider(fake, credentials=base64.b64encode(b"who:knows").decode(), credentials_variable="API_KEY")
    with pytest.raises(Unauthorized) as info:
        ask(provider)
    assert info.value.status == 401
    assert "API_KEY" in info.value.message and "credentials doesn't match db data" in info.value.message
    assert "who" not in info.value.message  # never echo the key
    wrong_scope = make_provider(fake, scope="GIGACHAT_API_B2B")
    with pytest.raises(Unauthorized) as info:
        ask(wrong_scope)
    assert "GIGACHAT_SCOPE" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error", "http_status"),
    [
        (402, PaymentRequired, 402),
        (429, RateLimited, 429),
        (500, UpstreamError, 502),
        (400, BadRequest, 400),
    ],
)
def test_injected_errors_are_typed(provider, fake, stream, status, error, http_status):
    fake.fail_next(status)
    with pytest.raises(error) as info:
        ask(provider, stream=stream)
    assert info.value.status == http_status
    assert text_of(ask(provider, stream=stream)) == "Echo: Hello"  # the next call works


def test_rate_limit_carries_retry_after(provider, fake):
    fake.fail_next(429, retry_after=7)
    with pytest.raises(RateLimited) as info:
        ask(provider, stream=True)
    assert info.value.retry_after == 7 and info.value.headers["Retry-After"] == "7"
    fake.fail_next(429)
    with pytest.raises(RateLimited) as info:
        ask(provider)
    assert info.value.retry_after is None and "Retry-After" not in info.value.headers


def test_unknown_model_and_bad_params(provider, fake):
    with pytest.raises(ModelNotFound) as info:
        ask(provider, model="GigaChat-Nope")
    assert info.value.status == 404 and info.value.param == "model"
    with pytest.raises(BadRequest) as info:
        ask(provider, options={"repetition_penalty": 0}, stream=True)
    assert info.value.status == 422 and "repetition_penalty" in info.value.message


def test_401_after_a_fresh_token_is_unauthorized(provider, fake):
    fake.fail_next(401, count=2)
    with pytest.raises(Unauthorized) as info:
        ask(provider)
    assert info.value.status == 401 and "GIGACHAT_CREDENTIALS" in info.value.message


def test_unreachable_gigachat_is_503():
    provider = GigaChatProvider(
        credentials=base64.b64encode(b"a:b").decode(),
        base_url="http://127.0.0.1:9/api/v1",
        auth_url="http://127.0.0.1:9/api/v2/oauth",
        timeout=2.0,
    )
    with pytest.raises(UpstreamUnavailable):
        ask(provider)
    assert [c.id for c in provider.list_models()] == list(FALLBACK_MODELS)


def test_oauth_server_error_is_503(provider, fake):
    fake.fail_next(500, endpoint="oauth")
    with pytest.raises(UpstreamUnavailable):
        ask(provider)


def test_image_parts_are_refused(provider):
    request = ChatRequest(
        model="GigaChat",
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    )
    with pytest.raises(BadRequest):
        provider.open_stream(request)


# --- models, cancel -------------------------------------------------------------------


def test_models_are_the_gigachat_chat_models_cached(provider, fake):
    ids = [card.id for card in provider.list_models()]
    assert ids[:2] == ["GigaChat", "GigaChat-2"]
    assert {"GigaChat-2-Pro", "GigaChat-2-Max"} <= set(ids)
    assert not any(i.startswith(("Embeddings", "GigaFilter", "GigaCheck")) for i in ids)
    provider.list_models()
    assert len(fake.requests_to("/models")) == 1
    assert provider.owns("GigaChat-2-Max") and not provider.owns("qwen-max-latest")


def test_cancel_unblocks_a_silent_stream(fake):
    fake.reply = "slow words here"
    fake.chunk_delay = 5.0
    provider = make_provider(fake, timeout=30.0)
    try:
        stream = provider.open_stream(
            ChatRequest(model="GigaChat", stream=True, messages=[{"role": "user", "content": "x"}])
        )
        assert isinstance(next(stream), ResponseStarted)
        assert next(stream) == TextDelta("slow")
        threading.Timer(0.2, stream.cancel).start()
        started = time.monotonic()
        rest = list(stream)
        assert time.monotonic() - started < 2.0
        assert not any(isinstance(e, Finished) for e in rest)
    finally:
        provider.close()


def test_slow_model_list_does_not_hold_the_route(fake, monkeypatch):
    import qwenproxy.providers.gigachat as module

    monkeypatch.setattr(module, "LIST_WAIT_SECONDS", 0.1)
    fake.delays["models"] = 0.6
    provider = make_provider(fake)
    try:
        started = time.monotonic()
        assert [c.id for c in provider.list_models()] == list(FALLBACK_MODELS)
        assert time.monotonic() - started < 0.5
        deadline = time.monotonic() + 3
        while provider._models_fetch is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "GigaChat-Pro" in [c.id for c in provider.list_models()]
        assert len(fake.requests_to("/models")) == 1
    finally:
        provider.close()


def test_unreadable_ca_bundle_is_a_clear_503(fake, tmp_path):
    provider = make_provider(fake, ca_bundle_file=str(tmp_path / "missing.pem"))
    with pytest.raises(UpstreamUnavailable) as info:
        ask(provider)
    assert "GIGACHAT_CA_BUNDLE_FILE" in info.value.message
