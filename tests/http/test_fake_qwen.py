"""Guards the fake chat.qwen.ai server (tests/fakes/qwen_web.py) against drifting from the spec.

Everything goes over real HTTP with plain ``requests``, the way the proxy will talk to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes.qwen_web import DEFAULT_MODELS, FakeQwen, running_fake_qwen

EXPIRED = "Token has expired, please log in again."


@pytest.fixture
def fake() -> Iterator[FakeQwen]:
    with running_fake_qwen() as server:
        yield server


# ---------------------------------------------------------------------------- helpers


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_chat(fake: FakeQwen, token: str, model: str = "qwen3-max") -> str:
    body = {
        "title": "Новый чат",
        "models": [model],
        "chat_mode": "normal",
        "chat_type": "t2t",
        "timestamp": int(time.time() * 1000),
    }
    r = requests.post(f"{fake.url}/api/v2/chats/new", json=body, headers=auth(token))
    assert r.status_code == 200
    data = r.json()
    assert data["success"] is True, data
    return data["data"]["id"]


def turn_body(
    chat_id: str,
    text: str,
    *,
    parent_id: str | None = None,
    model: str = "qwen3-max",
    stream: bool = True,
    phase: bool = True,
    incremental: bool = True,
    thinking: bool = False,
) -> dict[str, Any]:
    feature_config: dict[str, Any] = {"thinking_enabled": thinking}
    if phase:
        feature_config["output_schema"] = "phase"
    body: dict[str, Any] = {
        "stream": stream,
        "chat_id": chat_id,
        "chat_mode": "normal",
        "model": model,
        "parent_id": parent_id,
        "timestamp": int(time.time()),
        "messages": [
            {
                "fid": "c0ffee00-0000-4000-8000-000000000001",
                "parentId": parent_id,
                "parent_id": parent_id,
                "childrenIds": [],
                "role": "user",
                "content": text,
                "user_action": "chat",
                "files": [],
                "timestamp": int(time.time()),
                "models": [model],
                "chat_type": "t2t",
                "sub_chat_type": "t2t",
                "feature_config": feature_config,
                "extra": {"meta": {"subChatType": "t2t"}},
            }
        ],
    }
    if incremental:
        body["incremental_output"] = True
    return body


def complete(fake: FakeQwen, token: str, body: dict[str, Any], *, stream: bool = False) -> requests.Response:
    return requests.post(
        f"{fake.url}/api/v2/chat/completions",
        params={"chat_id": body["chat_id"]},
        json=body,
        headers=auth(token),
        stream=stream,
    )


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Strict parse: every event is exactly ``data: <json>`` followed by a blank line."""
    assert raw.endswith(b"\n\n")
    events = []
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: "), block
        assert b"\n" not in block
        events.append(json.loads(block[len(b"data: ") :].decode("utf-8")))
    return events


def iter_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            assert block.startswith(b"data: ")
            yield json.loads(block[len(b"data: ") :].decode("utf-8"))


def deltas(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events if "choices" in e]


def assert_error(response: requests.Response, code: str, details: str | None = None) -> dict:
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["request_id"], str) and len(body["request_id"]) == 36
    assert body["data"]["code"] == code, body
    if details is not None:
        assert body["data"]["details"] == details
    return body["data"]


def jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# ---------------------------------------------------------------------------- auth


def test_token_is_hs256_jwt_with_spec_claims(fake: FakeQwen) -> None:
    token = fake.make_token(user_id="u-1", expires_in=100)
    assert jwt_part(token, 0) == {"alg": "HS256", "typ": "JWT"}
    payload = jwt_part(token, 1)
    assert set(payload) == {"id", "last_password_change", "exp"}
    assert payload["id"] == "u-1"
    assert abs(payload["exp"] - (time.time() + 100)) < 5
    default = jwt_part(fake.make_token(), 1)
    assert abs(default["exp"] - (time.time() + 7 * 86400)) < 5


@pytest.mark.parametrize("kind", ["none", "garbage", "expired", "revoked", "foreign_secret"])
def test_bad_tokens_get_unauthorized_envelope(fake: FakeQwen, kind: str) -> None:
    headers: dict[str, str] = {}
    if kind == "garbage":
        headers = auth("not.a.jwt")
    elif kind == "expired":
        headers = auth(fake.make_token(expired=True))
    elif kind == "revoked":
        token = fake.make_token()
        fake.revoked.add(token)
        headers = auth(token)
    elif kind == "foreign_secret":
        with running_fake_qwen() as other:
            headers = auth(other.make_token())
    body = {
        "title": "t",
        "models": ["qwen3-max"],
        "chat_mode": "normal",
        "chat_type": "t2t",
        "timestamp": int(time.time() * 1000),
    }
    r = requests.post(f"{fake.url}/api/v2/chats/new", json=body, headers=headers)
    assert_error(r, "unauthorized", EXPIRED)
    r = requests.get(f"{fake.url}/api/v1/auths/", headers=headers)
    assert_error(r, "unauthorized", EXPIRED)


def test_token_cookie_alone_authenticates(fake: FakeQwen) -> None:
    token = fake.make_token()
    body = {
        "title": "t",
        "models": ["qwen3-max"],
        "chat_mode": "normal",
        "chat_type": "t2t",
        "timestamp": int(time.time() * 1000),
    }
    r = requests.post(f"{fake.url}/api/v2/chats/new", json=body, cookies={"token": token})
    assert r.json()["success"] is True


def test_signin_and_session(fake: FakeQwen) -> None:
    fake.add_user("alice@example.com", "s3cret")
    url = f"{fake.url}/api/v1/auths/signin"
    digest = hashlib.sha256(b"s3cret").hexdigest()
    r = requests.post(url, json={"email": "alice@example.com", "password": digest})
    assert r.status_code == 200
    data = r.json()
    for key in ("id", "email", "name", "role", "token", "token_type", "expires_at"):
        assert key in data
    assert data["token_type"] == "Bearer" and data["role"] == "user"
    assert jwt_part(data["token"], 1)["id"] == data["id"]
    assert r.cookies.get("token") == data["token"]

    r = requests.get(f"{fake.url}/api/v1/auths/", headers=auth(data["token"]))
    session = r.json()
    assert session["email"] == "alice@example.com" and session["token"] == data["token"]
    assert session["expires_at"] == jwt_part(data["token"], 1)["exp"]

    for password in ("s3cret", hashlib.sha256(b"wrong").hexdigest()):
        r = requests.post(url, json={"email": "alice@example.com", "password": password})
        assert r.status_code == 401
        assert "detail" in r.json()
    r = requests.post(url, json={"email": "bob@example.com", "password": digest})
    assert r.status_code == 401


# ---------------------------------------------------------------------------- models, chats


def test_models_shape(fake: FakeQwen) -> None:
    r = requests.get(f"{fake.url}/api/models")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"data"}
    assert [m["id"] for m in body["data"]] == DEFAULT_MODELS
    assert len(DEFAULT_MODELS) == 18
    by_id = {m["id"]: m for m in body["data"]}
    entry = by_id["qwen3-235b-a22b"]
    assert entry["object"] == "model" and entry["owned_by"] == "openai"
    assert entry["name"] == "Qwen3-235B-A22B-2507"
    meta = entry["info"]["meta"]
    assert meta["capabilities"]["thinking"] is True
    assert meta["max_thinking_generation_length"] and meta["max_context_length"]
    assert "t2t" in meta["chat_type"]
    assert "max_generation_length" in by_id["qwen-max-latest"]["info"]["meta"]
    assert by_id["qwq-32b"]["info"]["meta"]["is_single_round"] == 1
    assert by_id["qwen2.5-omni-7b"]["info"]["meta"]["file_limits"]["image_max_count"] == 5

    with running_fake_qwen(models=["m-a", "m-b"]) as small:
        ids = [m["id"] for m in requests.get(f"{small.url}/api/models").json()["data"]]
        assert ids == ["m-a", "m-b"]


def test_chats_new_validation(fake: FakeQwen) -> None:
    token = fake.make_token()
    good = {
        "title": "t",
        "models": ["qwen3-max"],
        "chat_mode": "normal",
        "chat_type": "t2t",
        "timestamp": int(time.time() * 1000),
    }
    url = f"{fake.url}/api/v2/chats/new"
    r = requests.post(url, json=good, headers=auth(token))
    body = r.json()
    assert r.headers["Content-Type"] == "application/json"
    assert set(body) == {"success", "request_id", "data"} and set(body["data"]) == {"id"}
    chat = fake.chats[body["data"]["id"]]
    assert chat["owner"] == jwt_part(token, 1)["id"] and chat["model"] == "qwen3-max"

    assert_error(requests.post(url, json={**good, "timestamp": int(time.time())}, headers=auth(token)), "Bad_Request")
    assert_error(requests.post(url, json={**good, "chat_mode": "weird"}, headers=auth(token)), "Bad_Request")
    assert_error(requests.post(url, json={**good, "models": []}, headers=auth(token)), "Bad_Request")
    assert_error(
        requests.post(url, json={**good, "models": ["gpt-4"]}, headers=auth(token)), "Not_Found", "Model not found"
    )


def test_get_list_and_delete_chat(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    r = complete(fake, token, turn_body(chat_id, "hi", stream=False))
    rid = r.json()["data"]["message_id"]
    got = requests.get(f"{fake.url}/api/v2/chats/{chat_id}", headers=auth(token)).json()
    assert got["success"] is True
    assert got["data"]["currentId"] == rid
    assert got["data"]["chat"]["history"]["messages"][rid]["content"] == "Echo: hi"
    listed = requests.get(f"{fake.url}/api/v2/chats/?page=1", headers=auth(token)).json()
    assert [c["id"] for c in listed["data"]] == [chat_id]

    other = fake.make_token()
    foreign = requests.get(f"{fake.url}/api/v2/chats/{chat_id}", headers=auth(other))
    assert_error(foreign, "Not_Found")
    r = requests.delete(f"{fake.url}/api/v2/chats/{chat_id}", headers=auth(token))
    assert r.json()["success"] is True and chat_id not in fake.chats
    gone = requests.get(f"{fake.url}/api/v2/chats/{chat_id}", headers=auth(token))
    assert_error(gone, "Not_Found")


def test_unknown_routes(fake: FakeQwen) -> None:
    r = requests.get(f"{fake.url}/api/v2/nothing")
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {"detail": "Not Found"}
    r = requests.post(f"{fake.url}/api/chat/completions", json={})
    assert r.status_code == 504 and r.headers["Content-Type"].startswith("text/html")


# ---------------------------------------------------------------------------- the stream


def test_stream_framing_and_cumulative_usage(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    text = "Привет, мир 🙂 ёж"
    r = complete(fake, token, turn_body(chat_id, text), stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/event-stream"
    raw = r.raw.read()
    assert b"[DONE]" not in raw and b"\nevent:" not in raw and b"\nid:" not in raw
    events = parse_sse(raw)

    created = events[0]["response.created"]
    assert set(created) == {"chat_id", "parent_id", "response_id", "response_index"}
    assert created["chat_id"] == chat_id and created["response_index"] == "0"
    assert created["parent_id"] != created["response_id"]
    assert raw.startswith(b'data: {"response.created":{"chat_id": "')
    assert raw.split(b"\n\n", 1)[0].endswith(b"} ")

    body = events[1:]
    assert all(set(e) == {"choices", "usage"} for e in body[:-1])
    assert body[-1] == {
        "choices": [{"delta": {"content": "", "role": "assistant", "status": "finished", "phase": "answer"}}]
    }
    typing = deltas(body[:-1])
    assert all(d["status"] == "typing" and d["phase"] == "answer" for d in typing)
    assert typing[-1]["content"] == ""
    assert "".join(d["content"] for d in typing) == f"Echo: {text}"
    outputs = [e["usage"]["output_tokens"] for e in body[:-1]]
    assert outputs[:-1] == list(range(1, len(outputs)))
    assert outputs[-1] == outputs[-2]
    for e in body[:-1]:
        usage = e["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["output_tokens_details"]["text_tokens"] == usage["output_tokens"]
    assert '"content": " мир"'.encode() in raw  # raw UTF-8, ", "/": " separators

    assert fake.wait_for(lambda: created["response_id"] in fake.completed)
    chat = fake.chats[chat_id]
    assert chat["in_progress"] is False
    assert chat["last_response_id"] == created["response_id"]
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert chat["messages"][0]["id"] == created["parent_id"]
    assert chat["messages"][1]["content"] == f"Echo: {text}"
    assert fake.errors == []


def test_words_n_streams_one_delta_per_word(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    raw = complete(fake, token, turn_body(chat_id, "give me words:40"), stream=True).raw.read()
    typing = [d for d in deltas(parse_sse(raw)) if d["status"] == "typing" and d["content"]]
    assert len(typing) == 40
    assert "".join(d["content"] for d in typing) == " ".join(f"w{i}" for i in range(1, 41))


def test_no_phase_without_output_schema(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    raw = complete(fake, token, turn_body(chat_id, "x", phase=False), stream=True).raw.read()
    assert all("phase" not in d for d in deltas(parse_sse(raw)))
    assert b'"phase"' not in raw


def test_cumulative_content_without_incremental_output(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    body = turn_body(chat_id, "words:3", incremental=False)
    raw = complete(fake, token, body, stream=True).raw.read()
    contents = [d["content"] for d in deltas(parse_sse(raw)) if d["status"] == "typing"]
    assert contents[:3] == ["w1", "w1 w2", "w1 w2 w3"]


def test_thinking_phase_precedes_answer(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    raw = complete(fake, token, turn_body(chat_id, "q", thinking=True), stream=True).raw.read()
    events = parse_sse(raw)
    ds = deltas(events)
    phases = [d["phase"] for d in ds]
    first_answer = phases.index("answer")
    assert set(phases[:first_answer]) == {"think"}
    assert ds[first_answer - 1]["status"] == "finished"
    assert ds[-1]["status"] == "finished" and ds[-1]["phase"] == "answer"
    last_usage = [e["usage"] for e in events if "usage" in e][-1]
    assert last_usage["output_tokens_details"]["reasoning_tokens"] > 0


def test_custom_answer_and_split_events(fake: FakeQwen) -> None:
    fake.answer = lambda text: f"Ответ на «{text}» 👍"
    fake.split_events = True
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    raw = complete(fake, token, turn_body(chat_id, "вопрос"), stream=True).raw.read()
    typing = [d for d in deltas(parse_sse(raw)) if d["status"] == "typing"]
    assert "".join(d["content"] for d in typing) == "Ответ на «вопрос» 👍"


def test_events_are_delivered_incrementally() -> None:
    with running_fake_qwen(chunk_delay=0.05) as fake:
        token = fake.make_token()
        chat_id = new_chat(fake, token)
        r = complete(fake, token, turn_body(chat_id, "words:6"), stream=True)
        events = iter_events(r)
        next(events)
        first = time.monotonic()
        rest = list(events)
        elapsed = time.monotonic() - first
        # 6 words + empty tail + finished = 8 delays of 50 ms after the first event.
        assert elapsed >= 0.3
        assert rest[-1]["choices"][0]["delta"]["status"] == "finished"


def test_non_stream_envelope(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    r = complete(fake, token, turn_body(chat_id, "hello", stream=False))
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {"chat_id", "parent_id", "message_id", "messages", "choices"}
    assert data["messages"] is None
    assert data["choices"] == [{"message": {"role": "assistant", "content": "Echo: hello"}}]
    assert fake.chats[chat_id]["last_response_id"] == data["message_id"]
    assert data["message_id"] in fake.completed


# ---------------------------------------------------------------------------- enforcement


def test_completion_errors(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)

    body = turn_body(chat_id, "a")
    body["messages"].append(dict(body["messages"][0]))
    assert_error(complete(fake, token, body), "Bad_Request", "Invalid input too many messages.")

    body = turn_body(chat_id, "a", model="qwen-nope")
    assert_error(complete(fake, token, body), "Not_Found", "Model not found")

    body = turn_body("00000000-0000-4000-8000-000000000000", "a")
    assert_error(complete(fake, token, body), "Not_Found")

    foreign = new_chat(fake, fake.make_token())
    assert_error(complete(fake, token, turn_body(foreign, "a")), "Not_Found")

    body = turn_body(chat_id, "a")
    r = requests.post(
        f"{fake.url}/api/v2/chat/completions", params={"chat_id": foreign}, json=body, headers=auth(token)
    )
    assert_error(r, "Bad_Request")

    body = turn_body(chat_id, "a", parent_id="00000000-0000-4000-8000-000000000000")
    assert_error(complete(fake, token, body), "Bad_Request")

    r = complete(fake, fake.make_token(expired=True), turn_body(chat_id, "a"))
    assert_error(r, "unauthorized", EXPIRED)
    assert fake.chats[chat_id]["messages"] == []


def test_parent_id_chaining_over_two_turns(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    first = parse_sse(complete(fake, token, turn_body(chat_id, "one"), stream=True).raw.read())
    rid1 = first[0]["response.created"]["response_id"]

    assert_error(complete(fake, token, turn_body(chat_id, "two")), "Bad_Request")
    user_id = first[0]["response.created"]["parent_id"]
    assert_error(complete(fake, token, turn_body(chat_id, "two", parent_id=user_id)), "Bad_Request")

    body = turn_body(chat_id, "two", parent_id=rid1)
    second = parse_sse(complete(fake, token, body, stream=True).raw.read())
    created = second[0]["response.created"]
    assert created["response_id"] != rid1
    messages = fake.chats[chat_id]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert messages[2]["parent_id"] == rid1 and messages[2]["id"] == created["parent_id"]
    assert fake.chats[chat_id]["last_response_id"] == created["response_id"]


def test_chat_in_progress(fake: FakeQwen) -> None:
    fake.chunk_delay = 0.01
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    r = complete(fake, token, turn_body(chat_id, "words:200"), stream=True)
    events = iter_events(r)
    rid = next(events)["response.created"]["response_id"]
    assert fake.chats[chat_id]["in_progress"] is True
    busy = complete(fake, token, turn_body(chat_id, "again", parent_id=rid))
    assert_error(busy, "Bad_Request", "The chat is in progress!")
    fake.chunk_delay = 0.0
    assert list(events)[-1]["choices"][0]["delta"]["status"] == "finished"
    assert fake.wait_for(lambda: not fake.chats[chat_id]["in_progress"])
    ok = complete(fake, token, turn_body(chat_id, "again", parent_id=rid, stream=False))
    assert ok.json()["success"] is True


def test_quota_rate_limited(fake: FakeQwen) -> None:
    token = fake.make_token()
    fake.quota[token] = 1
    fake.rate_limit_hours = 6
    chat_id = new_chat(fake, token)
    first = complete(fake, token, turn_body(chat_id, "a", stream=False)).json()
    assert first["success"] is True
    assert fake.quota[token] == 0
    body = turn_body(chat_id, "b", parent_id=first["data"]["message_id"])
    data = assert_error(complete(fake, token, body), "RateLimited")
    assert data["details"] == "You've reached the upper limit for today's usage."
    assert "{{num}}" in data["template"] and data["num"] == 6
    other = fake.make_token()
    assert complete(fake, other, turn_body(new_chat(fake, other), "c", stream=False)).json()["success"]


def test_abort_is_detected(fake: FakeQwen) -> None:
    fake.chunk_delay = 0.005
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    r = complete(fake, token, turn_body(chat_id, "words:2000"), stream=True)
    events = iter_events(r)
    rid = next(events)["response.created"]["response_id"]
    next(events)
    r.close()
    assert fake.wait_for(lambda: rid in fake.aborted, timeout=5)
    assert rid not in fake.completed
    assert fake.chats[chat_id]["in_progress"] is False
    assistant = fake.chats[chat_id]["messages"][-1]
    assert assistant["status"] == "aborted"
    assert 0 < len(assistant["content"]) < len(" ".join(f"w{i}" for i in range(1, 2001)))


# ---------------------------------------------------------------------------- hostile modes


def test_captcha(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    fake.hostile = "captcha"
    for r in (
        complete(fake, token, turn_body(chat_id, "a"), stream=True),
        requests.post(f"{fake.url}/api/v2/chats/new", json={}, headers=auth(token)),
    ):
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        body = r.json()
        assert body["ret"][0] == "FAIL_SYS_USER_VALIDATE"
        assert "_____tmd_____/punish" in body["data"]["url"]
        assert "action=captcha" in body["data"]["url"]
    assert fake.chats[chat_id]["messages"] == []


def test_captcha_on_large_body(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    r = complete(fake, token, turn_body(chat_id, "x" * (130 * 1024)))
    assert r.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    fake.captcha_body_limit = None
    r = complete(fake, token, turn_body(chat_id, "x" * (130 * 1024), stream=False))
    assert r.json()["success"] is True


def test_waf_page(fake: FakeQwen) -> None:
    token = fake.make_token()
    fake.hostile = "waf"
    r = requests.post(f"{fake.url}/api/v2/chats/new", json={}, headers=auth(token))
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.text.startswith("<!doctypehtml>")
    assert '<meta name="aliyun_waf_aa"' in r.text


def test_actual_status_404_and_hostile_times(fake: FakeQwen) -> None:
    token = fake.make_token()
    fake.hostile = "actual_status_404"
    fake.hostile_times = 1
    url = f"{fake.url}/api/v2/chats/new"
    body = {
        "title": "t",
        "models": ["qwen3-max"],
        "chat_mode": "normal",
        "chat_type": "t2t",
        "timestamp": int(time.time() * 1000),
    }
    r = requests.post(url, json=body, headers=auth(token))
    assert r.status_code == 200 and r.headers["x-actual-status-code"] == "404"
    assert isinstance(r.json(), dict)
    assert fake.hostile is None
    r = requests.post(url, json=body, headers=auth(token))
    assert "x-actual-status-code" not in r.headers and r.json()["success"] is True


def test_truncate_drops_connection_before_finished(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    fake.hostile = "truncate"
    r = complete(fake, token, turn_body(chat_id, "words:50"), stream=True)
    seen: list[dict[str, Any]] = []
    events = iter_events(r)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        while True:  # a clean end (StopIteration) would fail the test
            seen.append(next(events))
    assert "response.created" in seen[0]
    assert len(seen) == 1 + fake.hostile_after
    assert all(d["status"] == "typing" for d in deltas(seen))
    rid = seen[0]["response.created"]["response_id"]
    assert fake.wait_for(lambda: not fake.chats[chat_id]["in_progress"])
    assert rid not in fake.completed and rid not in fake.aborted


def test_stream_error_event(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    fake.hostile = "stream_error"
    raw = complete(fake, token, turn_body(chat_id, "words:50"), stream=True).raw.read()
    events = parse_sse(raw)
    assert len(events) == 1 + fake.hostile_after + 1
    assert set(events[-1]) == {"error"}
    assert set(events[-1]["error"]) == {"code", "details"}
    assert all(d["status"] == "typing" for d in deltas(events))
    assert not fake.chats[chat_id]["in_progress"]


# ---------------------------------------------------------------------------- bookkeeping


def test_requests_are_recorded(fake: FakeQwen) -> None:
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    complete(fake, token, turn_body(chat_id, "a", stream=False))
    entry = fake.requests[-1]
    assert entry["method"] == "POST" and entry["path"] == "/api/v2/chat/completions"
    assert entry["query"] == {"chat_id": chat_id}
    assert entry["headers"]["authorization"] == f"Bearer {token}"
    assert entry["headers"]["Authorization"] == f"Bearer {token}"
    assert entry["json"]["chat_id"] == chat_id
    assert entry["time"] <= time.time()
