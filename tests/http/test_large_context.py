"""Large contexts against the fake chat.qwen.ai + fake OSS: no completions body above
QWEN_MAX_BODY_BYTES (the fake answers anything over 128 KiB with its captcha), the long part
attached as a parsed document, reused on the next turn; too long even so → a 400."""

from __future__ import annotations

import openai
import pytest

from qwenproxy import create_app
from qwenproxy.qwen.transport import json_bytes
from tests.conftest import LiveServer, app_config
from tests.helpers import completions

LIMIT = 120000


@pytest.fixture
def fake_oss(fake_oss, fake_qwen):
    fake_qwen.check_documents = True  # a document must be this user's upload, parsed
    return fake_oss


def make_app(tmp_path, fake_qwen, fake_oss, **extra):
    config = app_config(tmp_path, fake_qwen, QWEN_OSS_BASE_URL=fake_oss.url, QWEN_PARSE_POLL_INTERVAL=0.01, **extra)
    return create_app(config)


@pytest.fixture
def app(tmp_path, fake_qwen, fake_oss):
    application = make_app(tmp_path, fake_qwen, fake_oss)
    yield application
    application.extensions["providers"].close()


def sts_calls(fake) -> int:
    return sum(1 for r in fake.requests if r["path"].endswith("getstsToken"))


def assert_no_body_over_the_limit(fake) -> None:
    sizes = [len(json_bytes(b)) for b in completions(fake)]
    assert sizes and max(sizes) <= LIMIT, sizes
    assert fake.walls == []  # never the captcha


def long_text(size: int, word: str = "lorem") -> str:
    """About ``size`` bytes of UTF-8 text, numbered so that any cut is visible."""
    out, n = [], 0
    while n < size:
        piece = f"{word}{len(out)} "
        out.append(piece)
        n += len(piece.encode())
    return "".join(out)


def test_a_300_kb_prompt_goes_as_a_parsed_document(client, fake_qwen, fake_oss) -> None:
    prompt = long_text(150_000) + long_text(150_000, "слово")  # ASCII and two-byte characters
    assert len(prompt.encode()) > 300_000
    r = client.post("/api/chat/completions", json={"messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 200, r.get_json()
    assert_no_body_over_the_limit(fake_qwen)
    (sent,) = completions(fake_qwen)
    message = sent["messages"][0]
    (item,) = message["files"]
    assert item["file_class"] == "document" and item["context"] == "full" and item["progress"] == 100
    assert item["file"]["meta"]["parse_meta"] == {"parse_status": "success"}
    assert item["name"] in message["content"] and len(message["content"].encode()) < 48 * 1024
    (doc,) = fake_qwen.documents
    assert doc["known"] and doc["parse"] == "success" and doc["problem"] is None
    assert doc["text"] == prompt  # the whole prompt, uncut, read back from the fake OSS
    assert r.get_json()["choices"][0]["message"]["content"] == "Echo: " + message["content"]
    assert client.get("/v1/files").get_json()["data"] == []  # the gateway's own document, not the client's


def test_a_long_system_prompt_is_a_document_reused_on_the_next_turn(app, fake_qwen, fake_oss) -> None:
    server = LiveServer(app)
    try:
        sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        system = {"role": "system", "content": long_text(150_000, "rule")}
        messages = [system, {"role": "user", "content": "hi"}]
        first = sdk.chat.completions.create(model="qwen3-max", messages=messages)
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "again"},
        ]
        second = sdk.chat.completions.create(model="qwen3-max", messages=messages, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in second if c.choices) == "Echo: again"
    finally:
        server.stop()
    assert_no_body_over_the_limit(fake_qwen)
    bodies = completions(fake_qwen)
    assert [b["messages"][0]["content"] for b in bodies] == ["hi", "again"]  # the turns stay inline
    assert bodies[1]["parent_id"] == first.id  # the second turn continued the same upstream chat
    ids = [[f["id"] for f in b["messages"][0]["files"]] for b in bodies]
    assert len(ids[0]) == 1 and ids[0] == ids[1]  # the same document, attached again
    assert sts_calls(fake_qwen) == 1  # uploaded once
    assert "instructions-" in bodies[0]["system_message"] and len(bodies[0]["system_message"]) < 300
    assert fake_qwen.documents[0]["text"] == system["content"]


def test_a_long_folded_history_goes_as_a_document(client, fake_qwen, fake_oss) -> None:
    fake_qwen.answer = lambda text: "I read it." if "conversation-" in text else f"Echo: {text}"
    messages = [
        {"role": "user", "content": long_text(70_000, "question")},
        {"role": "assistant", "content": long_text(70_000, "answer")},
        {"role": "user", "content": "Summarise what we said."},
    ]
    r = client.post("/api/chat/completions", json={"messages": messages})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["choices"][0]["message"]["content"] == "I read it."
    assert_no_body_over_the_limit(fake_qwen)
    (sent,) = completions(fake_qwen)
    content = sent["messages"][0]["content"]
    assert content.endswith("Summarise what we said.") and "question0" not in content
    (doc,) = fake_qwen.documents
    assert doc["text"].startswith("<conversation_history>\n### user\nquestion0 ")
    assert "### assistant\nanswer0 " in doc["text"] and "Summarise" not in doc["text"]


@pytest.mark.parametrize(
    ("extra", "limit_text"),
    [
        ({"MAX_UPLOAD_MB": 0.1}, "upload limit of 104857 bytes"),  # the document itself is too big
        ({"QWEN_MAX_BODY_BYTES": 1500}, "limit of 1500 bytes"),  # not even the note fits
    ],
)
def test_too_long_even_so_is_a_400_context_length_exceeded(tmp_path, fake_qwen, fake_oss, extra, limit_text) -> None:
    app = make_app(tmp_path, fake_qwen, fake_oss, **extra)
    messages = [{"role": "user", "content": long_text(300_000)}]
    try:
        answers = [
            app.test_client().post("/api/chat/completions", json={"messages": messages, "stream": stream})
            for stream in (False, True)  # a stream is refused before it starts: a plain JSON 400
        ]
    finally:
        app.extensions["providers"].close()
    for r in answers:
        assert r.status_code == 400 and r.mimetype == "application/json"
        error = r.get_json()["error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert error["param"] == "messages" and limit_text in error["message"]
    assert completions(fake_qwen) == [] and sts_calls(fake_qwen) == 0 and fake_qwen.walls == []
    assert not any(r["path"] == "/api/v2/chats/new" for r in fake_qwen.requests)  # no empty chat left behind
