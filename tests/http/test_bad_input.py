"""Bad input: schemathesis over the project's own OpenAPI document, plus a hand-written corpus.

Zero 5xx, and every error in OpenAI's shape. Two 5xx are allowed and checked: ``GET /qwen``
answers 503 ``local_worker_unavailable`` because this test runs without the local model's
worker (an honest "not configured", not a failure of the gateway), and a strict
``response_format`` that the fake's echo cannot meet is a 502 ``invalid_structured_output``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from qwenproxy import create_app
from qwenproxy.ops.middleware import normalize_path
from tests.conftest import app_config
from tests.fakes.gigachat import FakeGigaChat
from tests.fakes.oss import FakeOSS

ALLOWED_5XX = {
    ("GET", "/qwen", 503, "local_worker_unavailable"),
    # a strict response_format the fake's echo cannot meet, even after the repair round
    ("POST", "/api/chat/completions", 502, "invalid_structured_output"),
    ("POST", "/api/chat", 502, "invalid_structured_output"),
}
EXAMPLES = 20  # per operation and mode; no shrinking: the whole run stays within seconds


@pytest.fixture
def api(tmp_path: Path, fake_qwen) -> Iterator:
    oss = FakeOSS().start()
    fake_qwen.oss = oss
    fake_qwen.image_base_url = fake_qwen.url  # generated images are fetched from the fake: loopback only
    with FakeGigaChat() as giga:
        app = create_app(
            app_config(
                tmp_path,
                fake_qwen,
                QWEN_OSS_BASE_URL=oss.url,
                QWEN_PARSE_POLL_INTERVAL=0.01,
                **giga.settings(),
                GIGACHAT_TIMEOUT=5.0,
                MAX_REQUEST_MB=1,
            )
        )
        yield app
        app.extensions["providers"].close()
    oss.stop()


ANTHROPIC_PATHS = ("/api/messages", "/anthropic/")


def check_answer(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    """No server error; an error is ``{"error": {"message", "type", "param", "code"}}``, or
    Anthropic's ``{"type": "error", "error": {"type", "message"}}`` on its paths."""
    if status >= 400 and normalize_path(path).startswith(ANTHROPIC_PATHS):
        assert content_type.startswith("application/json"), f"{method} {path} -> {status}: {body[:200]!r}"
        answer = json.loads(body)
        assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, answer
        assert answer["error"]["message"] and answer["error"]["type"].endswith("_error"), answer
        assert status < 500, f"{method} {path} -> {status}: {answer}"
    elif status >= 400:
        assert content_type.startswith("application/json"), f"{method} {path} -> {status}: {body[:200]!r}"
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)
        assert "param" in error and "code" in error
        if status >= 500:
            assert (method, path, status, error["code"]) in ALLOWED_5XX, f"{method} {path} -> {status}: {error}"


def _fuzz(operation, mode: GenerationMode):  # type: ignore[no-untyped-def]
    """A Hypothesis test of one operation in one mode (positive: valid, negative: invalid data)."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call()
        headers = {k.lower(): v for k, v in response.headers.items()}
        content_type = headers.get("content-type") or ""
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        check_answer(case.method, operation.path, response.status_code, content_type, response.content)

    return run


def test_schemathesis_finds_no_server_error_and_only_openai_errors(api) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", api)
    ran = {GenerationMode.POSITIVE: 0, GenerationMode.NEGATIVE: 0}
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in ran:
            try:
                _fuzz(operation, mode)()
            except Unsatisfiable:  # nothing to break: an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE
                continue
            ran[mode] += 1
    assert len(operations) >= 18
    assert ran[GenerationMode.POSITIVE] == len(operations) and ran[GenerationMode.NEGATIVE] >= 8


# --- the hand-written corpus -------------------------------------------------------------

COMPLETIONS = "/api/chat/completions"
USER = [{"role": "user", "content": "hi"}]

CORPUS: list[tuple[str, str, dict]] = [
    # malformed JSON
    ("POST", COMPLETIONS, {"data": b'{"messages": ['}),
    ("POST", COMPLETIONS, {"data": b"{'messages': 1}"}),
    ("POST", COMPLETIONS, {"data": b""}),
    ("POST", COMPLETIONS, {"data": b"   \n"}),
    ("POST", COMPLETIONS, {"data": b"null"}),
    ("POST", COMPLETIONS, {"data": b"[]"}),
    ("POST", COMPLETIONS, {"data": b'"a string"'}),
    ("POST", COMPLETIONS, {"data": b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'}),
    ("POST", COMPLETIONS, {"data": b"[" * 100_000 + b"]" * 100_000}),
    ("POST", COMPLETIONS, {"data": b'{"a":' * 50_000 + b"1" + b"}" * 50_000}),
    ("POST", "/api/chat", {"data": b'{"message": "x",}'}),
    ("PUT", "/api/chats/x/rename", {"data": b"{"}),
    ("POST", "/api/chats/cleanup", {"data": b"{nope}"}),
    ("POST", "/api/chats", {"data": b"]"}),
    ("POST", "/api/messages", {"data": b'{"model": "claude-x", "messages": ['}),
    ("POST", "/anthropic/v1/messages/count_tokens", {"data": b"[]"}),
    ("POST", "/api/responses", {"data": b'{"input": '}),
    # wrong types
    ("POST", COMPLETIONS, {"json": {"messages": "hi"}}),
    ("POST", COMPLETIONS, {"json": {"messages": {"role": "user"}}}),
    ("POST", COMPLETIONS, {"json": {"messages": [1, 2]}}),
    ("POST", COMPLETIONS, {"json": {"messages": [{"role": 5, "content": "x"}]}}),
    ("POST", COMPLETIONS, {"json": {"messages": [{"role": "user", "content": 5}]}}),
    ("POST", COMPLETIONS, {"json": {"messages": [{"role": "user", "content": [1]}]}}),
    ("POST", COMPLETIONS, {"json": {"messages": [{"role": "user", "content": [{"type": 3}]}]}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "stream": "yes"}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "temperature": "hot"}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "temperature": 1e309}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "max_tokens": -1}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "max_tokens": True}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "max_tokens": 1.5}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "stop": 5}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "stream_options": []}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "chatId": 5}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "tools": {}}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "model": 5}}),
    ("POST", COMPLETIONS, {"json": {"messages": USER, "model": ["qwen3-max"]}}),
    ("POST", "/api/chat", {"json": {"message": {}}}),
    ("POST", "/v1/messages", {"json": {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user"}]}}),
    ("POST", "/v1/messages", {"json": {"model": "claude-x", "max_tokens": 5, "messages": USER, "system": 5}}),
    (
        "POST",
        "/v1/messages",
        {"json": {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}},
    ),
    (
        "POST",
        "/v1/messages",
        {"json": {"model": "m", "max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}}},
    ),
    ("POST", "/v1/responses", {"json": {"input": 5}}),
    ("POST", "/v1/responses", {"json": {"input": "x", "tools": [{"type": "file_search"}]}}),
    ("POST", "/v1/responses", {"json": {"input": "x", "previous_response_id": "resp_missing"}}),
    ("GET", "/v1/responses/resp_missing", {}),
    ("GET", "/v1/responses/resp_missing/input_items", {"query_string": {"limit": "x"}}),
    ("POST", "/api/chat", {"json": {"message": [{"type": "video"}]}}),
    ("POST", "/api/chat", {"json": {"message": 12}}),
    ("POST", "/api/chats", {"json": {"name": 5}}),
    ("PUT", "/api/chats/missing/rename", {"json": {"name": "x"}}),
    ("POST", "/api/chats/cleanup", {"json": {"olderThan": "x"}}),
    ("POST", "/api/chats/cleanup", {"json": {"maxChats": -3}}),
    ("POST", "/api/chats/cleanup", {"json": {}}),
    ("POST", "/api/files/getstsToken", {"json": {"filename": "a/b.png", "filesize": 1, "filetype": "image"}}),
    ("GET", "/gigachat", {"query_string": {"session_id": "s"}}),
    ("GET", "/gigachat", {"query_string": {"query": "q", "session_id": "s" * 500}}),
    ("GET", "/gigachat", {"query_string": {"query": "q", "session_id": "s", "stream": "maybe"}}),
    ("GET", "/qwen", {"query_string": {"query": "q", "session_id": "s", "max_tokens": "many"}}),
    ("GET", "/history", {"query_string": {"session_id": "s", "bot": "other"}}),
    # huge bodies (MAX_REQUEST_MB=1 here)
    ("POST", COMPLETIONS, {"data": b'{"messages": [{"role": "user", "content": "' + b"x" * 2_000_000 + b'"}]}'}),
    ("POST", "/api/chats/cleanup", {"data": b" " * 1_100_000 + b"{}"}),
    # invalid UTF-8
    ("POST", COMPLETIONS, {"data": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'}),
    ("POST", "/api/chat", {"data": b'{"message": "\xc3\x28"}'}),
    ("GET", "/gigachat", {"query_string": "query=%FF%FE&session_id=%C3%28", "may_succeed": True}),  # U+FFFD
    ("GET", "/api/chats/%FF%FE", {}),
    ("DELETE", "/api/chats/%C3%28", {}),
    # unknown routes and methods
    ("GET", "/api/nope", {}),
    ("GET", "/v1/nope/deeper", {}),
    ("GET", "/api/v2/v1/chat", {}),
    ("GET", "/etc/passwd", {}),
    ("GET", "/api/../../etc/passwd", {}),
    ("GET", COMPLETIONS, {}),
    ("DELETE", "/api/models", {}),
    ("PATCH", COMPLETIONS, {"json": {"messages": USER}}),
    ("PUT", "/", {}),
    ("POST", "/health/live", {}),
    ("POST", "/metrics", {}),
    ("TRACE", "/api/models", {}),
    # broken multipart and lying content types
    ("POST", COMPLETIONS, {"data": b"--x\r\nbroken", "content_type": "multipart/form-data"}),
    (
        "POST",
        COMPLETIONS,
        {
            "data": b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\ntrunc',
            "content_type": "multipart/form-data; boundary=b",
        },
    ),
    ("POST", "/api/chat", {"data": b"--b--", "content_type": "multipart/form-data; boundary=b"}),
    ("POST", "/api/chats", {"data": b"name=x", "content_type": "application/x-www-form-urlencoded"}),
    ("POST", COMPLETIONS, {"data": b'{"messages": 1}', "content_type": "text/plain"}),
    ("POST", COMPLETIONS, {"data": b"\x00\x01\x02", "content_type": "application/octet-stream"}),
    ("POST", COMPLETIONS, {"data": b'{"messages": []}', "headers": {"Content-Encoding": "gzip"}}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), CORPUS, ids=[f"{i:02d}-{c[0]}" for i, c in enumerate(CORPUS)])
def test_corpus_gets_a_4xx_in_openai_shape(api, method, path, kwargs) -> None:
    kwargs = dict(kwargs)
    lowest = 200 if kwargs.pop("may_succeed", False) else 400
    if "data" in kwargs and "content_type" not in kwargs:  # malformed JSON, not a wrong media type
        kwargs["content_type"] = "application/json"
    response = api.test_client().open(path, method=method, **kwargs)
    assert lowest <= response.status_code < 500, (response.status_code, response.data[:300])
    check_answer(method, path, response.status_code, response.content_type or "", response.data)


def test_the_corpus_leaves_the_gateway_working(api) -> None:
    client = api.test_client()
    for method, path, kwargs in CORPUS:
        client.open(path, method=method, **{k: v for k, v in kwargs.items() if k != "may_succeed"})
    ok = client.post(COMPLETIONS, json={"messages": USER})
    assert ok.status_code == 200 and ok.json["choices"][0]["message"]["content"] == "Echo: hi"
