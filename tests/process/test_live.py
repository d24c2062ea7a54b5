"""The app under gunicorn + gevent, driven by the official ``openai`` package and ``curl -N``."""

from __future__ import annotations

import json
import shutil
import subprocess

import openai
import pytest

from tests.helpers import hang_up_after
from tests.openai_schema import validate


def _curl(url: str, body: str) -> subprocess.Popen:
    """``curl -N``: prints each chunk as it arrives."""
    return subprocess.Popen(
        ["curl", "-sN", "-X", "POST", "-H", "Content-Type: application/json", "-d", body, url],
        stdout=subprocess.PIPE,
    )


@pytest.fixture
def oai(gunicorn_server):
    return openai.OpenAI(base_url=gunicorn_server.url + "/api", api_key="dummy", max_retries=0, timeout=30)


def test_openai_client_non_stream_and_two_turns(oai, gunicorn_server, fake_qwen) -> None:
    first = oai.chat.completions.create(model="qwen3-max", messages=[{"role": "user", "content": "first"}])
    assert first.choices[0].message.content == "Echo: first"
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens > 0
    validate("CreateChatCompletionResponse", first.model_dump(exclude_none=False, exclude_unset=True))
    chat_id = first.model_extra["chatId"]
    second = oai.chat.completions.create(
        model="qwen3-max", messages=[{"role": "user", "content": "second"}], extra_body={"chatId": chat_id}
    )
    assert second.model_extra["chatId"] == chat_id
    turns = [r["json"] for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
    assert turns[1]["chat_id"] == turns[0]["chat_id"] and turns[1]["parent_id"] == first.id


def test_openai_client_stream_with_v1_base_url(gunicorn_server) -> None:
    client = openai.OpenAI(base_url=gunicorn_server.url + "/v1", api_key="dummy", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="qwen3-max",
        messages=[{"role": "user", "content": "words:8"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"w{i}" for i in range(1, 9))
    assert chunks[-1].usage.completion_tokens >= 8


def test_openai_client_raises_the_right_exceptions(oai, fake_qwen) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="qwen3-max", messages=[{"role": "system", "content": "only system"}])
    fake_qwen.hostile = "captcha"
    with pytest.raises(openai.InternalServerError) as exc:
        oai.chat.completions.create(model="qwen3-max", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 502
    assert exc.value.body["code"] == "upstream_blocked"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_receives_chunks_before_the_upstream_finishes(gunicorn_server, fake_qwen) -> None:
    fake_qwen.chunk_delay = 0.15
    body = json.dumps({"model": "qwen3-max", "stream": True, "messages": [{"role": "user", "content": "words:20"}]})
    proc = _curl(gunicorn_server.url + "/api/chat/completions", body)
    try:
        seen_text_at_fake_progress = None
        for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith("data: {") and '"content":"w' in line:
                # the upstream is still sending: not every word has been emitted yet
                seen_text_at_fake_progress = len(fake_qwen.completed)
                break
        assert seen_text_at_fake_progress == 0, "the first chunk arrived only after the upstream had finished"
        rest = proc.stdout.read().decode()
        assert rest.rstrip().endswith("data: [DONE]")
    finally:
        proc.kill()
        proc.wait()
    assert fake_qwen.wait_for(lambda: len(fake_qwen.completed) == 1)


def test_gevent_workers_serve_concurrent_streams(gunicorn_server, fake_qwen) -> None:
    """Slow streams must not block each other inside a gevent worker: all 8 are in flight at once
    (2 workers that blocked on one stream each would let only 2 through at a time)."""
    fake_qwen.chunk_delay = 0.2
    body = json.dumps({"stream": True, "messages": [{"role": "user", "content": "words:10"}]})
    procs = [_curl(gunicorn_server.url + "/api/chat/completions", body) for _ in range(8)]

    def in_flight() -> bool:
        started = [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
        return len(started) == 8 and not fake_qwen.completed

    try:
        assert fake_qwen.wait_for(in_flight, timeout=20)
        outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(o.rstrip().endswith("data: [DONE]") for o in outputs)


def test_client_disconnect_cancels_upstream_and_keeps_the_partial_answer(gunicorn_server, fake_qwen, tmp_path) -> None:
    import sqlite3

    fake_qwen.chunk_delay = 0.1
    body = {"stream": True, "messages": [{"role": "user", "content": "words:200"}]}
    hang_up_after(gunicorn_server.url, body, words=3)
    # the gateway notices at its next write, closes the upstream request, and saves what it had
    # (the operations issue's bound: the upstream sees its request closed within 2 s)
    # and asks the site to stop generating (2026 §3, from a greenlet of the gevent worker):
    # the fake ends the turn as "stopped" if that call overtakes its own notice of the close
    (turn,) = [chat["turn"] for chat in fake_qwen.chats.values()]
    assert fake_qwen.wait_for(lambda: turn.outcome in ("aborted", "stopped"), timeout=2)
    assert not fake_qwen.completed
    assert fake_qwen.wait_for(lambda: fake_qwen.stop_calls, timeout=3)
    assert fake_qwen.stop_calls[0]["response_id"] == turn.response_id

    def partial_saved():
        with sqlite3.connect(tmp_path / "session" / "qwenproxy.db") as conn:
            rows = conn.execute("SELECT status, content FROM message WHERE role = 'assistant'").fetchall()
        return bool(rows) and rows[0][0] == "partial" and rows[0][1].startswith("w1 w2 w3")

    assert fake_qwen.wait_for(partial_saved, timeout=2)
