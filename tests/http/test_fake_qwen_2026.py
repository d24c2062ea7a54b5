"""Guards the 2026 switches of the fake chat.qwen.ai (docs/QWEN_2026.md) over real HTTP.

Every switch is driven with plain ``requests`` and the bytes and shapes it produces are
checked against ``/work/shared/specs/qwen-web-2026.md`` and the peers cited in the doc.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fakes import ISSUED_SECRETS
from tests.fakes.oss import FakeOSS, running_fake_oss
from tests.fakes.qwen_site2026 import QUOTA_FEATURES, THINKING_LOCKED_DETAILS, TINY_MP4
from tests.fakes.qwen_web import DEFAULT_MODELS, MODELS_2026, FakeQwen, running_fake_qwen
from tests.http.test_fake_qwen import iter_events
from tests.http.test_fake_qwen import parse_sse as events

IN_PROGRESS = "The chat is in progress!"


@pytest.fixture
def fake() -> Iterator[FakeQwen]:
    with running_fake_qwen() as server:
        yield server


@pytest.fixture
def fake26() -> Iterator[FakeQwen]:
    with running_fake_qwen() as server:
        yield server.use_2026_site()


# ---------------------------------------------------------------------------- helpers


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ms() -> int:
    return int(time.time() * 1000)


def chat_body_2026(model: str = "qwen3.7-plus", chat_type: str = "t2t", chat_mode: str = "normal") -> dict[str, Any]:
    """chats/new as the 2026 front end sends it (2026 §2)."""
    return {
        "chatId": "",
        "models": [model],
        "project_id": "",
        "timestamp": ms(),
        "chat_type": chat_type,
        "chat_mode": chat_mode,
    }


def new_chat(fake: FakeQwen, token: str | None, model: str = "qwen3.7-plus", **kw: Any) -> str:
    headers = auth(token) if token else {}
    r = requests.post(f"{fake.url}/api/v2/chats/new", json=chat_body_2026(model, **kw), headers=headers)
    data = r.json()
    assert data["success"] is True, data
    return data["data"]["id"]


def body_2026(
    chat_id: str,
    text: str,
    *,
    model: str = "qwen3.7-plus",
    parent_id: str | None = None,
    thinking: bool = True,
    chat_type: str = "t2t",
    files: list[dict[str, Any]] | None = None,
    stream: bool = True,
    chat_mode: str = "normal",
) -> dict[str, Any]:
    """A completions body as the 2026 front end sends it (2026 §2)."""
    return {
        "stream": stream,
        "version": "2.1",
        "incremental_output": True,
        "chat_id": chat_id,
        "chatId": chat_id,
        "chat_mode": chat_mode,
        "model": model,
        "parent_id": parent_id,
        "parentId": parent_id,
        "messages": [
            {
                "id": None,
                "fid": str(uuid.uuid4()),
                "parentId": parent_id,
                "childrenIds": [str(uuid.uuid4())],
                "role": "user",
                "content": text,
                "user_action": "chat",
                "files": files or [],
                "timestamp": int(time.time()),
                "models": [model],
                "model": model,
                "chat_type": chat_type,
                "sub_chat_type": chat_type,
                "feature_config": {
                    "thinking_enabled": thinking,
                    "output_schema": "phase",
                    "thinking_mode": "Thinking" if thinking else "Fast",
                    "thinking_format": "summary",
                    "research_mode": "normal",
                    "auto_thinking": False,
                    "auto_search": False,
                },
                "extra": {"meta": {"subChatType": chat_type}},
            }
        ],
        "timestamp": ms(),
    }


def complete(
    fake: FakeQwen,
    body: dict[str, Any],
    token: str | None = None,
    *,
    stream: bool = False,
    cookies: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        f"{fake.url}/api/v2/chat/completions",
        params={"chat_id": body["chat_id"]},
        json=body,
        headers=auth(token) if token else {},
        cookies=cookies,
        stream=stream,
    )


def blocks(raw: bytes) -> list[bytes]:
    """The SSE blocks of a body (each ends with a blank line)."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    return raw[:-2].split(b"\n\n")


def deltas(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in evs if "choices" in e]


def answer_of(evs: list[dict[str, Any]], response_id: str | None = None) -> str:
    parts = []
    for e in evs:
        if "choices" not in e or (response_id is not None and e.get("response_id") != response_id):
            continue
        d = e["choices"][0]["delta"]
        if d.get("phase") == "answer":
            parts.append(d["content"])
    return "".join(parts)


def assert_envelope_error(r: requests.Response, code: str, details: str | None = None) -> dict[str, Any]:
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == {"success", "request_id", "data"}
    assert body["success"] is False and len(body["request_id"]) == 36
    assert body["data"]["code"] == code, body
    if details is not None:
        assert body["data"]["details"] == details, body
    return body["data"]


# ---------------------------------------------------------------------------- models (2026 §1)


def test_models_v2_shape_with_the_2026_list(fake: FakeQwen) -> None:
    fake.models = list(MODELS_2026)
    for path in ("/api/v2/models/", "/api/v2/models"):
        r = requests.get(f"{fake.url}{path}")
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        body = r.json()
        assert set(body) == {"success", "request_id", "data"} and body["success"] is True
        assert [m["id"] for m in body["data"]["data"]] == ["qwen3.7-plus", "qwen3.8-max", "qwen3.7-max", "qwen3.6-plus"]
    by_id = {m["id"]: m["info"]["meta"] for m in body["data"]["data"]}
    for model_id, meta in by_id.items():
        assert {"capabilities", "max_context_length", "chat_type", "think_skip", "abilities"} <= set(meta)
        assert meta["capabilities"]["thinking"] is True and meta["supports_non_streaming"] is False
        assert {"t2t", "t2i", "image_edit", "t2v", "deep_research"} <= set(meta["chat_type"])
        assert meta["think_skip"] == {"enable": model_id != "qwen3.8-max"}
    assert by_id["qwen3.8-max"]["abilities"]["thinking"] == 4
    assert by_id["qwen3.7-plus"]["abilities"]["thinking"] == 1
    # the old path still answers, without the envelope
    old = requests.get(f"{fake.url}/api/models").json()
    assert set(old) == {"data"} and [m["id"] for m in old["data"]] == MODELS_2026
    assert old["data"][1]["info"]["meta"]["think_skip"] == {"enable": False}


def test_models_v2_serves_the_default_list_and_can_be_switched_off(fake: FakeQwen) -> None:
    data = requests.get(f"{fake.url}/api/v2/models/").json()["data"]["data"]
    assert [m["id"] for m in data] == DEFAULT_MODELS
    assert all(m["info"]["meta"]["think_skip"] == {"enable": True} for m in data)
    fake.models_v2 = False
    r = requests.get(f"{fake.url}/api/v2/models/")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert requests.get(f"{fake.url}/api/models").status_code == 200


def test_locked_thinking_refuses_thinking_off_with_invalid_input(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token, model="qwen3.8-max")
    r = complete(fake26, body_2026(chat_id, "hi", model="qwen3.8-max", thinking=False), token, stream=True)
    data = assert_envelope_error(r, "invalid_input", THINKING_LOCKED_DETAILS)
    assert set(data) == {"code", "details"}
    assert fake26.chats[chat_id]["messages"] == [] and not fake26.chats[chat_id]["in_progress"]
    # thinking on: summary thinking, then the answer
    evs = events(complete(fake26, body_2026(chat_id, "hi", model="qwen3.8-max"), token, stream=True).raw.read())
    phases = [d.get("phase") for d in deltas(evs)]
    assert phases[0] == "thinking_summary" and "answer" in phases
    assert answer_of(evs) == "Echo: hi"
    # a model whose thinking can be skipped accepts thinking off
    other = new_chat(fake26, token, model="qwen3.7-plus")
    evs = events(complete(fake26, body_2026(other, "hi", thinking=False), token, stream=True).raw.read())
    assert [d.get("phase") for d in deltas(evs)][0] == "answer"


# ---------------------------------------------------------------------------- the 2.1 body (2026 §2)


def _drop(body: dict[str, Any], *path: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(body))
    target = copy
    for key in path[:-1]:
        target = target[0] if key == "0" else target[key]
    del target[path[-1]]
    return copy


def test_2026_body_check_on_completions(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    good = body_2026(chat_id, "hi", stream=False)
    bad: list[tuple[str, dict[str, Any]]] = [
        ("version", _drop(good, "version")),
        ("version", {**good, "version": "2.0"}),
        ("chatId", _drop(good, "chatId")),
        ("parentId", _drop(good, "parentId")),
        ("timestamp", {**good, "timestamp": int(time.time())}),
        ("messages[0].user_action", _drop(good, "messages", "0", "user_action")),
        ("messages[0].models", {**good, "messages": [{**good["messages"][0], "models": ["qwen3.6-plus"]}]}),
        ("messages[0].childrenIds", _drop(good, "messages", "0", "childrenIds")),
        ("messages[0].sub_chat_type", _drop(good, "messages", "0", "sub_chat_type")),
        ("messages[0].extra.meta.subChatType", _drop(good, "messages", "0", "extra")),
        (
            "messages[0].feature_config.thinking_enabled",
            _drop(good, "messages", "0", "feature_config", "thinking_enabled"),
        ),
    ]
    for field, body in bad:
        assert_envelope_error(complete(fake26, body, token), "Bad_Request", f"Invalid input: {field}")
    assert fake26.body_errors == [field for field, _ in bad]
    assert fake26.chats[chat_id]["messages"] == []
    # "" and null both mean "no parent" (capture: parentId "" with parent_id null)
    ok = complete(fake26, {**good, "parentId": ""}, token).json()
    assert ok["success"] is True and ok["data"]["choices"][0]["message"]["content"] == "Echo: hi"
    # output_schema missing is accepted, but the deltas lose their phase
    nxt = body_2026(chat_id, "again", parent_id=ok["data"]["message_id"])
    evs = events(
        complete(fake26, _drop(nxt, "messages", "0", "feature_config", "output_schema"), token, stream=True).raw.read()
    )
    assert deltas(evs) and all("phase" not in d for d in deltas(evs))
    # every delta carries the 2026 top-level response_id and timestamp
    rid = evs[0]["response.created"]["response_id"]
    assert all(e["response_id"] == rid and isinstance(e["timestamp"], int) for e in evs if "choices" in e)


def test_2026_body_check_on_chats_new(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    url = f"{fake26.url}/api/v2/chats/new"
    r = requests.post(url, json={**chat_body_2026(), "title": "Новый чат"}, headers=auth(token))
    assert_envelope_error(r, "Bad_Request", "Invalid input: title")
    r = requests.post(url, json=chat_body_2026(chat_mode="local"), headers=auth(token))
    assert_envelope_error(r, "Bad_Request", "Invalid input: chat_mode")
    assert fake26.body_errors == ["title", "chat_mode"]
    assert requests.post(url, json=chat_body_2026(), headers=auth(token)).json()["success"] is True
    # without the switch the 2025 body (title, "local") is still accepted
    fake26.require_2026_body = False
    old = {**chat_body_2026(), "title": "t", "chat_mode": "local"}
    assert requests.post(url, json=old, headers=auth(token)).json()["success"] is True


def test_last_request_keeps_bodies_and_headers(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    headers = {**auth(token), "source": "web", "version": "0.2.87", "x-request-id": str(uuid.uuid4())}
    requests.post(
        f"{fake26.url}/api/v2/chat/completions",
        params={"chat_id": chat_id},
        json=body_2026(chat_id, "hi", stream=False),
        headers=headers,
    )
    entry = fake26.last_request("/api/v2/chat/completions")
    assert entry is not None and entry["json"]["version"] == "2.1"
    assert entry["headers"]["Source"] == "web" and entry["headers"]["version"] == "0.2.87"
    assert fake26.last_request("/api/v2/chats/new")["json"]["chat_mode"] == "normal"
    assert fake26.last_request("/nowhere") is None


# ---------------------------------------------------------------------------- auth by cookie


def test_token_cookie_can_be_required(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    url = f"{fake26.url}/api/v2/users/status"
    assert requests.get(url, headers=auth(token)).json()["data"] is True
    fake26.require_token_cookie = True
    assert_envelope_error(requests.get(url, headers=auth(token)), "unauthorized")
    assert requests.get(url, cookies={"token": token}).json()["data"] is True
    chat = requests.post(f"{fake26.url}/api/v2/chats/new", json=chat_body_2026(), cookies={"token": token}).json()
    assert chat["success"] is True


# ---------------------------------------------------------------------------- walls (2026 §2, §4)


def test_body_size_wall_answers_the_captcha(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    small = body_2026(chat_id, "x" * (117 * 1000), stream=False)
    assert len(json.dumps(small).encode()) < 128 * 1024
    first = complete(fake26, small, token).json()
    assert first["success"] is True
    big = body_2026(chat_id, "x" * (129 * 1024), parent_id=first["data"]["message_id"])
    r = complete(fake26, big, token, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["ret"][0] == "FAIL_SYS_USER_VALIDATE" and "_____tmd_____/punish?x5secdata=" in body["data"]["url"]
    big_chat = {**chat_body_2026(), "padding": "y" * (129 * 1024)}
    r = requests.post(f"{fake26.url}/api/v2/chats/new", json=big_chat, headers=auth(token))
    assert r.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE"
    assert fake26.walls == ["body_limit", "body_limit"]
    fake26.captcha_body_limit = 2000  # configurable
    r = complete(fake26, body_2026(chat_id, "z" * 3000, parent_id=first["data"]["message_id"]), token)
    assert r.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE"


def test_captcha_frame_as_the_first_frame_of_a_200_stream(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    fake26.hostile = "captcha_frame"
    fake26.hostile_times = 1
    r = complete(fake26, body_2026(chat_id, "words:20"), token, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
    raw = r.raw.read()
    (frame,) = events(raw)
    assert raw.startswith(b'data: {"ret":["FAIL_SYS_USER_VALIDATE::')
    assert set(frame) == {"ret", "data"} and frame["ret"] == ["FAIL_SYS_USER_VALIDATE::哎哟喂,被挤爆啦,请稍后重试"]
    assert frame["data"]["url"].startswith("https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish")
    assert "x5secdata=" in frame["data"]["url"]
    assert fake26.walls == ["captcha_frame"] and not fake26.chats[chat_id]["in_progress"]
    assert fake26.hostile is None  # hostile_times ran out


def test_captcha_frame_after_normal_frames(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    fake26.hostile = "captcha_frame"
    fake26.wall_after_frames = 3
    evs = events(complete(fake26, body_2026(chat_id, "words:20", thinking=False), token, stream=True).raw.read())
    assert len(evs) == 4
    assert "response.created" in evs[0] and all(d["status"] == "typing" for d in deltas(evs[1:3]))
    assert evs[3]["ret"][0].startswith("FAIL_SYS_USER_VALIDATE")
    assert not any(d.get("status") == "finished" for d in deltas(evs))


@pytest.mark.parametrize("mode", ["html_frame", "html_line"])
def test_html_captcha_line_inside_the_stream(fake26: FakeQwen, mode: str) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    fake26.hostile = mode
    fake26.wall_after_frames = 1
    raw = complete(fake26, body_2026(chat_id, "words:20"), token, stream=True).raw.read()
    first, wall = blocks(raw)
    assert json.loads(first[len(b"data: ") :])["response.created"]
    if mode == "html_frame":
        assert wall.startswith(b"data: <!doctypehtml>")
    else:
        assert wall.startswith(b"<!doctypehtml>")
    assert b"aliyun_waf_aa" in wall and b"punish?x5secdata=" in wall and b"\n" not in wall
    assert fake26.walls == [mode]


@pytest.mark.parametrize("code", [404, 403])
def test_actual_status_code_wall(fake26: FakeQwen, code: int) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    fake26.hostile = f"actual_status_{code}"
    r = complete(fake26, body_2026(chat_id, "hi"), token, stream=True)
    assert r.status_code == 200 and r.headers["x-actual-status-code"] == str(code)
    assert r.headers["Content-Type"] == "application/json" and len(r.content) < 100
    assert r.json()["code"] == code


def test_wall_on_a_non_streamed_turn(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    fake26.hostile = "captcha_frame"
    r = complete(fake26, body_2026(chat_id, "hi", stream=False), token)
    assert r.json()["ret"][0] == "FAIL_SYS_USER_VALIDATE"


# ---------------------------------------------------------------------------- stop (2026 §3)


def stop(fake: FakeQwen, token: str, chat_id: str, response_id: str, query: str | None = None) -> requests.Response:
    return requests.post(
        f"{fake.url}/api/v2/chat/completions/stop",
        params={"chat_id": query or chat_id},
        json={"chat_id": chat_id, "response_id": response_id},
        headers=auth(token),
    )


def running_stream(
    fake: FakeQwen, words: int, delay: float
) -> tuple[str, str, requests.Response, Iterator[dict[str, Any]], str]:
    """A streamed answer of ``words`` words, started: (token, chat id, the response, its
    remaining events, the response id)."""
    fake.chunk_delay = delay
    token = fake.make_token()
    chat_id = new_chat(fake, token)
    r = complete(fake, body_2026(chat_id, f"words:{words}", thinking=False), token, stream=True)
    stream = iter_events(r)
    return token, chat_id, r, stream, next(stream)["response.created"]["response_id"]


def test_stop_ends_a_running_stream(fake26: FakeQwen) -> None:
    token, chat_id, _r, stream, rid = running_stream(fake26, 500, 0.01)
    next(stream)
    answer = stop(fake26, token, chat_id, rid)
    assert answer.json() == {"success": True, "request_id": answer.json()["request_id"], "data": True}
    assert not fake26.chats[chat_id]["in_progress"]  # free as soon as stop answered
    rest = list(stream)
    assert rest[-1] == {"response.stopped": {"response_id": rid}}
    assert fake26.stop_calls[0]["active"] is True and fake26.stop_calls[0]["response_id"] == rid
    assert fake26.chats[chat_id]["messages"][-1]["status"] == "stopped"
    nxt = complete(fake26, body_2026(chat_id, "next", parent_id=rid, stream=False), token).json()
    assert nxt["success"] is True


def test_abandoned_stream_keeps_the_chat_in_progress_until_stop(fake26: FakeQwen) -> None:
    fake26.abandon_keeps_generating = True
    token, chat_id, r, stream, rid = running_stream(fake26, 5000, 0.005)
    next(stream)
    r.close()
    assert fake26.wait_for(lambda: rid in fake26.aborted)
    busy = complete(fake26, body_2026(chat_id, "next", parent_id=rid), token, stream=True)
    assert_envelope_error(busy, "Bad_Request", IN_PROGRESS)
    assert fake26.chats[chat_id]["messages"][-1]["status"] == "typing"
    # stop must name this chat and one of its answers
    assert_envelope_error(stop(fake26, token, chat_id, str(uuid.uuid4())), "Bad_Request")
    assert_envelope_error(stop(fake26, token, chat_id, rid, query=str(uuid.uuid4())), "Bad_Request")
    assert_envelope_error(stop(fake26, fake26.make_token(), chat_id, rid), "Not_Found")
    assert stop(fake26, token, chat_id, rid).json()["success"] is True
    assert [c["active"] for c in fake26.stop_calls] == [True]
    ok = complete(fake26, body_2026(chat_id, "next", parent_id=rid, stream=False), token).json()
    assert ok["success"] is True
    # a stop after the answer finished is answered, and changes nothing
    assert stop(fake26, token, chat_id, ok["data"]["message_id"]).json()["success"] is True
    assert [c["active"] for c in fake26.stop_calls] == [True, False]


def test_abandoned_generation_can_end_by_itself(fake26: FakeQwen) -> None:
    fake26.abandon_keeps_generating = True
    fake26.abandon_seconds = 0.2
    _token, chat_id, r, stream, _rid = running_stream(fake26, 5000, 0.005)
    next(stream)
    r.close()
    assert fake26.wait_for(lambda: fake26.aborted)
    assert fake26.wait_for(lambda: not fake26.chats[chat_id]["in_progress"], timeout=5)
    assert fake26.stop_calls == []


def test_without_the_switch_an_abandoned_chat_is_free(fake26: FakeQwen) -> None:
    _token, chat_id, r, _stream, rid = running_stream(fake26, 5000, 0.005)
    r.close()
    assert fake26.wait_for(lambda: rid in fake26.aborted)
    assert not fake26.chats[chat_id]["in_progress"]


# ---------------------------------------------------------------------------- parallel answers (2026 §3)


def test_parallel_answers_interleave_with_their_own_response_ids(fake26: FakeQwen) -> None:
    fake26.parallel_answers = "interleave"
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    evs = events(complete(fake26, body_2026(chat_id, "Paris", thinking=False), token, stream=True).raw.read())
    created = [e["response.created"] for e in evs[:2]]
    assert [c["response_index"] for c in created] == ["0", "1"]
    primary, backup = created[0]["response_id"], created[1]["response_id"]
    assert primary != backup and created[0]["parent_id"] == created[1]["parent_id"]
    rest = evs[2:]
    assert all(e["response_id"] in (primary, backup) for e in rest)
    assert rest[0]["response_id"] == backup  # the backup speaks first, as captured
    ids = [e["response_id"] for e in rest if e["choices"][0]["delta"]["content"]]
    assert ids[:4] == [backup, primary, backup, primary]  # token by token
    assert answer_of(rest, primary) == answer_of(rest, backup) == "Echo: Paris"
    finished = [e["response_id"] for e in rest if e["choices"][0]["delta"]["status"] == "finished"]
    assert finished == [backup, primary] and rest[-1]["response_id"] == primary
    assert all("usage" not in e for e in rest if e["choices"][0]["delta"]["status"] == "finished")
    assert fake26.parallel_turns == [
        {"chat_id": chat_id, "mode": "interleave", "response_ids": {"0": primary, "1": backup}}
    ]
    assert fake26.chats[chat_id]["last_response_id"] == primary
    nxt = complete(fake26, body_2026(chat_id, "more", parent_id=primary, stream=False), token).json()
    assert nxt["success"] is True


def test_parallel_answers_with_an_empty_primary(fake26: FakeQwen) -> None:
    fake26.parallel_answers = "empty_primary"
    fake26.parallel_alt_answer = lambda text: f"Backup: {text}"
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    evs = events(complete(fake26, body_2026(chat_id, "Paris", thinking=False), token, stream=True).raw.read())
    primary = evs[0]["response.created"]["response_id"]
    backup = evs[1]["response.created"]["response_id"]
    assert answer_of(evs, primary) == "" and answer_of(evs, backup) == "Backup: Paris"
    statuses = [e["choices"][0]["delta"]["status"] for e in evs[2:] if e["response_id"] == primary]
    assert statuses == ["typing", "finished"]
    messages = {m["id"]: m for m in fake26.chats[chat_id]["messages"]}
    assert messages[primary]["content"] == "" and messages[backup]["content"] == "Backup: Paris"


def test_connection_held_open_after_finished(fake26: FakeQwen) -> None:
    fake26.keep_open_after_finished = True
    fake26.keep_open_seconds = 10
    token = fake26.make_token()
    chat_id = new_chat(fake26, token)
    r = complete(fake26, body_2026(chat_id, "hi", thinking=False), token, stream=True)
    for event in iter_events(r):
        if "choices" in event and event["choices"][0]["delta"]["status"] == "finished":
            break
    r.close()  # a client that stops reading at finished
    assert fake26.wait_for(lambda: fake26.held_open, timeout=5)
    (held,) = fake26.held_open
    assert held["client_closed"] is True and held["seconds"] < 5
    # a client that reads to the end of the body waits until the fake lets go
    fake26.keep_open_seconds = 0.3
    again = complete(fake26, body_2026(chat_id, "again", parent_id=held["response_id"], stream=False), token)
    assert again.json()["success"] is True  # the chat is free while the connection is held
    chat2 = new_chat(fake26, token)
    started = time.monotonic()
    raw = complete(fake26, body_2026(chat2, "hi", thinking=False), token, stream=True).raw.read()
    assert time.monotonic() - started >= 0.3
    assert events(raw)[-1]["choices"][0]["delta"]["status"] == "finished"
    assert fake26.held_open[-1]["client_closed"] is False


# ---------------------------------------------------------------------------- accounts (2026 §5)


def sha(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def test_v2_signin_refresh_and_cookies(fake: FakeQwen) -> None:
    fake.add_user("a@example.com", "pw-1")
    r = requests.post(f"{fake.url}/api/v2/auths/signin", json={"email": "a@example.com", "password": sha("pw-1")})
    body = r.json()
    assert body["success"] is True and set(body) == {"success", "request_id", "data"}
    data = body["data"]
    assert {"token", "refresh_token", "expires_at", "token_type", "id", "email"} <= set(data)
    assert r.cookies["token"] == data["token"] and r.cookies["refresh_token"] == data["refresh_token"]
    assert data["token"] in ISSUED_SECRETS and data["refresh_token"] in ISSUED_SECRETS
    assert requests.get(f"{fake.url}/api/v2/users/status", headers=auth(data["token"])).json()["data"] is True
    wrong = requests.post(f"{fake.url}/api/v2/auths/signin", json={"email": "a@example.com", "password": sha("x")})
    assert_envelope_error(wrong, "Unauthorized")
    # refresh: a new token and a new refresh token; the old refresh token dies (rotation)
    fake.token_lifetime = 120
    r = requests.post(f"{fake.url}/api/v2/auths/refresh", json={"refresh_token": data["refresh_token"]})
    renewed = r.json()["data"]
    assert set(renewed) == {"token", "token_type", "expires_at", "refresh_token", "refresh_expires_at"}
    assert renewed["token"] != data["token"] and renewed["refresh_token"] != data["refresh_token"]
    assert abs(renewed["expires_at"] - (time.time() + 120)) < 5
    assert renewed["refresh_token"] in ISSUED_SECRETS and r.cookies["token"] == renewed["token"]
    again = requests.post(f"{fake.url}/api/v2/auths/refresh", json={"refresh_token": data["refresh_token"]})
    assert_envelope_error(again, "unauthorized")
    assert fake.refresh_calls == ["ok", "invalid"]
    # without rotation the same refresh token keeps working
    fake.refresh_rotates = False
    for _ in range(2):
        r = requests.post(f"{fake.url}/api/v2/auths/refresh", json={"refresh_token": renewed["refresh_token"]})
        assert r.json()["data"]["refresh_token"] == renewed["refresh_token"]
    # the refresh token may also come as a cookie
    r = requests.post(f"{fake.url}/api/v2/auths/refresh", json={}, cookies={"refresh_token": renewed["refresh_token"]})
    assert r.json()["success"] is True


def test_short_lived_tokens_expire(fake: FakeQwen) -> None:
    fake.add_user("b@example.com", "pw")
    fake.token_lifetime = 1
    data = requests.post(
        f"{fake.url}/api/v2/auths/signin", json={"email": "b@example.com", "password": sha("pw")}
    ).json()["data"]
    assert data["expires_at"] - time.time() <= 1.5
    url = f"{fake.url}/api/v2/users/status"
    assert fake.wait_for(lambda: requests.get(url, headers=auth(data["token"])).json()["success"] is False, timeout=4)
    fake.token_lifetime = 3600
    fresh = requests.post(f"{fake.url}/api/v2/auths/refresh", json={"refresh_token": data["refresh_token"]}).json()
    assert requests.get(url, headers=auth(fresh["data"]["token"])).json()["data"] is True


def test_signin_version_switches(fake: FakeQwen) -> None:
    fake.add_user("c@example.com", "pw")
    creds = {"email": "c@example.com", "password": sha("pw")}
    assert requests.post(f"{fake.url}/api/v1/auths/signin", json=creds).json()["token"]
    fake.signin_v1_status = 405
    r = requests.post(f"{fake.url}/api/v1/auths/signin", json=creds)
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
    assert requests.post(f"{fake.url}/api/v2/auths/signin", json=creds).json()["success"] is True
    fake.signin_v2 = False
    r = requests.post(f"{fake.url}/api/v2/auths/signin", json=creds)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert fake.signin_calls == ["v1", "v1", "v2", "v2"]


def test_settings_update_is_recorded(fake: FakeQwen) -> None:
    token = fake.make_token(user_id="user-1")
    url = f"{fake.url}/api/v2/users/user/settings/update"
    memory = {"memory": {"enable_memory": False, "enable_history_memory": False}}
    tools = {"tools_enabled": {"web_search": False, "code_interpreter": False, "bio": False}}
    assert requests.post(url, json=memory, headers=auth(token)).json()["success"] is True
    merged = requests.post(url, json=tools, headers=auth(token)).json()["data"]
    assert merged == {**memory, **tools}
    assert fake.settings_updates == [{"user_id": "user-1", "body": memory}, {"user_id": "user-1", "body": tools}]
    assert_envelope_error(requests.post(url, json=memory), "unauthorized")
    assert_envelope_error(requests.post(url, json={}, headers=auth(token)), "Bad_Request")


def test_entitlement_quota(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    url = f"{fake26.url}/api/v2/users/user/entitlement_quota"
    fake26.entitlement_quota = {"qwen3.8-max": {"times_left": 2}, "t2v": {"times_left": 0, "time_unit": "hour"}}
    data = requests.post(url, json={"features": QUOTA_FEATURES}, headers=auth(token)).json()["data"]
    assert data["user_tier"] == "free"
    assert set(data["model"]) == set(MODELS_2026)
    assert data["model"]["qwen3.8-max"] == {"times_left": 2, "time_unit": "day", "time_amount": 1}
    assert data["model"]["qwen3.7-plus"]["times_left"] == -1
    assert data["t2v"] == {"times_left": 0, "time_unit": "hour", "time_amount": 1}
    assert data["deep_research_deep_research"]["times_left"] == 5 and data["search"]["times_left"] == -1
    assert set(data) == {"user_tier", *QUOTA_FEATURES}
    assert fake26.quota_calls == [QUOTA_FEATURES]
    assert_envelope_error(requests.post(url, json={"features": "t2v"}, headers=auth(token)), "Bad_Request")
    assert_envelope_error(requests.post(url, json={"features": ["t2v"]}), "unauthorized")


# ---------------------------------------------------------------------------- guest mode (2026 §5)


def test_guest_mode(fake26: FakeQwen) -> None:
    url = f"{fake26.url}/api/v2/chats/new"
    # without guest mode: the real unauthorized answer
    assert_envelope_error(requests.post(url, json=chat_body_2026(chat_mode="guest")), "unauthorized")
    fake26.guest_mode = True
    page = requests.get(f"{fake26.url}/c/guest")
    cookies = {"cna": page.cookies["cna"]}
    listed = requests.get(f"{fake26.url}/api/v2/models/", cookies=cookies).json()["data"]["data"]
    assert [m["id"] for m in listed] == ["qwen3.7-plus", "qwen3.6-plus"]
    token = fake26.make_token()
    assert len(requests.get(f"{fake26.url}/api/models", headers=auth(token)).json()["data"]) == 4
    # a guest chat needs chat_mode guest and a guest model
    assert_envelope_error(requests.post(url, json=chat_body_2026(), cookies=cookies), "unauthorized")
    r = requests.post(url, json=chat_body_2026("qwen3.8-max", chat_mode="guest"), cookies=cookies)
    assert_envelope_error(r, "Not_Found", "Model not found")
    chat_id = requests.post(url, json=chat_body_2026(chat_mode="guest"), cookies=cookies).json()["data"]["id"]
    assert fake26.chats[chat_id]["guest"] is True
    body = body_2026(chat_id, "hi", chat_mode="guest")
    evs = events(complete(fake26, body, cookies=cookies, stream=True).raw.read())
    assert answer_of(evs) == "Echo: hi"
    # another guest (other cna) does not see this chat; a normal-mode body is refused
    other = {"cna": "someone-else"}
    assert_envelope_error(complete(fake26, body_2026(chat_id, "x", chat_mode="guest"), cookies=other), "Not_Found")
    assert_envelope_error(complete(fake26, body_2026(chat_id, "x"), cookies=cookies), "unauthorized")


# ---------------------------------------------------------------------------- media (2026 §6)


def test_image_edit_streams_an_image_url(fake26: FakeQwen) -> None:
    fake26.image_base_url = fake26.url
    token = fake26.make_token()
    chat_id = new_chat(fake26, token, chat_type="image_edit")
    source = "https://cdn.qwenlm.ai/source.png"
    files = [{"type": "image", "url": source}]
    evs = events(
        complete(
            fake26, body_2026(chat_id, "make it blue", chat_type="image_edit", files=files), token, stream=True
        ).raw.read()
    )
    (image, done) = deltas(evs)
    assert image["phase"] == "image_gen" and image["status"] == "typing" and "/image_edit/" in image["content"]
    assert done == {"content": "", "role": "assistant", "status": "finished", "phase": "image_gen"}
    r = requests.get(image["content"])
    assert r.headers["Content-Type"] == "image/png" and r.content.startswith(b"\x89PNG")
    assert fake26.image_edits[0]["images"] == [source] and fake26.image_edits[0]["prompt"] == "make it blue"
    nobody = body_2026(chat_id, "x", chat_type="image_edit", parent_id=evs[0]["response.created"]["response_id"])
    assert_envelope_error(complete(fake26, nobody, token), "Bad_Request")


def _start_video(fake: FakeQwen, token: str) -> tuple[str, str]:
    chat_id = new_chat(fake, token, chat_type="t2v")
    r = complete(fake, body_2026(chat_id, "a cat surfing", chat_type="t2v", stream=False), token)
    body = r.json()
    assert body["success"] is True and r.headers["Content-Type"] == "application/json"
    (message,) = body["data"]["messages"]
    assert message["role"] == "assistant" and "choices" not in body["data"]
    assert not fake.chats[chat_id]["in_progress"]
    return chat_id, message["extra"]["wanx"]["task_id"]


def poll(fake: FakeQwen, token: str, task_id: str) -> dict[str, Any]:
    r = requests.get(f"{fake.url}/api/v1/tasks/status/{task_id}", headers=auth(token))
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    return r.json()


def test_t2v_task_goes_queued_running_success(fake26: FakeQwen) -> None:
    fake26.image_base_url = fake26.url
    token = fake26.make_token()
    chat_id, task_id = _start_video(fake26, token)
    states = [poll(fake26, token, task_id) for _ in range(4)]
    assert [(s["task_status"], s["progress"]) for s in states] == [
        ("queued", 0),
        ("running", 33),
        ("running", 66),
        ("success", 100),
    ]
    assert all(s["task_id"] == task_id for s in states)
    url = states[-1]["content"]
    assert "/t2v/" in url and url.split("?")[0].endswith(".mp4")
    r = requests.get(url)
    assert r.headers["Content-Type"] == "video/mp4" and r.content == TINY_MP4
    assert poll(fake26, token, task_id)["task_status"] == "success"  # stays done
    assert fake26.chats[chat_id]["messages"][-1]["content"] == url
    # another account does not see the task; an unknown task is Not_Found
    assert_envelope_error(
        requests.get(f"{fake26.url}/api/v1/tasks/status/{task_id}", headers=auth(fake26.make_token())), "Not_Found"
    )
    assert_envelope_error(requests.get(f"{fake26.url}/api/v1/tasks/status/nope", headers=auth(token)), "Not_Found")


def test_t2v_task_can_fail(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    fake26.task_outcome = "failed"
    fake26.task_queued_polls = 0
    fake26.task_running_polls = 1
    _, task_id = _start_video(fake26, token)
    assert poll(fake26, token, task_id)["task_status"] == "running"
    failed = poll(fake26, token, task_id)
    assert failed["task_status"] == "failed" and failed["message"] and "content" not in failed


def test_deep_research_streams_progress_sources_then_report(fake26: FakeQwen) -> None:
    token = fake26.make_token()
    chat_id = new_chat(fake26, token, chat_type="deep_research")
    evs = events(
        complete(fake26, body_2026(chat_id, "tides", chat_type="deep_research"), token, stream=True).raw.read()
    )
    ds = deltas(evs)
    progress = [d for d in ds if d["phase"] == "thinking_summary" and d["status"] == "typing"]
    titles = [p["extra"]["summary_title"]["content"] for p in progress]
    assert titles[-1] == ["Planning the research", "Searching sources", "Writing the report"]
    assert all(len(a) <= len(b) for a, b in zip(titles, titles[1:], strict=False))  # cumulative
    search = [d for d in ds if d["phase"] == "web_search"]
    assert search[0]["function_call"]["name"] == "web_search"
    assert len(search[1]["extra"]["tool_result"]["docs"]) == 2
    phases = [d["phase"] for d in ds]
    assert phases.index("thinking_summary") < phases.index("web_search") < phases.index("answer")
    assert answer_of(evs) == "Research report: Echo: tides [[1]] [[2]]"
    assert ds[-1]["status"] == "finished"
    usage = [e["usage"] for e in evs if "usage" in e][-1]
    assert usage["output_tokens_details"]["reasoning_tokens"] == len(progress)


# ---------------------------------------------------------------------------- uploaded documents (2026 §2)


def oss_put_v1(oss: FakeOSS, sts: dict[str, Any], data: bytes, content_type: str) -> requests.Response:
    """PUT an object with OSS signature V1 (spec §5.2 (a)), as the seed's ali-oss does."""
    date = email.utils.formatdate(usegmt=True)
    headers = {"Content-Type": content_type, "x-oss-date": date, "x-oss-security-token": sts["security_token"]}
    oss_lines = [f"{k.lower()}:{v}" for k, v in sorted(headers.items()) if k.lower().startswith("x-oss-")]
    to_sign = "\n".join(["PUT", "", content_type, date, *oss_lines, f"/{oss.bucket}/{sts['file_path']}"])
    mac = hmac.new(sts["access_key_secret"].encode(), to_sign.encode(), hashlib.sha1).digest()
    headers["Authorization"] = f"OSS {sts['access_key_id']}:{base64.b64encode(mac).decode()}"
    return requests.put(f"{oss.url}/{sts['file_path']}", data=data, headers=headers)


def upload_document(fake: FakeQwen, oss: FakeOSS, token: str, text: str, *, parse: bool = True) -> dict[str, Any]:
    raw = text.encode()
    sts = requests.post(
        f"{fake.url}/api/v2/files/getstsToken",
        json={"filename": "history.txt", "filesize": len(raw), "filetype": "document"},
        headers=auth(token),
    ).json()["data"]
    put = oss_put_v1(oss, sts, raw, "text/plain")
    assert put.status_code == 200, put.text
    if parse:
        requests.post(f"{fake.url}/api/v2/files/parse", json={"file_id": sts["file_id"]}, headers=auth(token))
        while True:
            status = requests.post(
                f"{fake.url}/api/v2/files/parse/status", json={"file_id_list": [sts["file_id"]]}, headers=auth(token)
            ).json()["data"][0]["status"]
            if status != "parsing":
                break
    return {
        "type": "file",
        "file": {"id": sts["file_id"], "filename": "history.txt", "meta": {"name": "history.txt", "size": len(raw)}},
        "id": sts["file_id"],
        "url": sts["file_url"],
        "name": "history.txt",
        "status": "uploaded",
        "size": len(raw),
        "file_type": "text/plain",
        "showType": "file",
        "file_class": "document",
        "context": "full",
        "progress": 100,
        "parse_meta": {"parse_status": "success"},
    }


def test_attached_documents_are_recorded_with_their_text(fake26: FakeQwen) -> None:
    with running_fake_oss() as oss:
        fake26.oss = oss
        token = fake26.make_token()
        history = "user: My name is Bob\nassistant: Hi Bob\n" * 4000
        doc = upload_document(fake26, oss, token, history)
        chat_id = new_chat(fake26, token)
        body = body_2026(chat_id, "What is my name?", files=[doc], stream=False)
        assert len(json.dumps(body).encode()) < 128 * 1024 < len(history.encode())
        ok = complete(fake26, body, token).json()
        assert ok["success"] is True
        (record,) = fake26.documents
        assert record["id"] == doc["id"] and record["text"] == history and record["parse"] == "success"
        assert record["problem"] is None and record["response_id"] == ok["data"]["message_id"]
        assert record["descriptor"]["context"] == "full"
        # check_documents refuses a document that is not parsed or not this user's
        fake26.check_documents = True
        unparsed = upload_document(fake26, oss, token, "draft", parse=False)
        nxt = body_2026(chat_id, "again", files=[unparsed], parent_id=ok["data"]["message_id"], stream=False)
        assert_envelope_error(complete(fake26, nxt, token), "Bad_Request", "Invalid input: files")
        foreign = {**doc, "id": str(uuid.uuid4())}
        nxt["messages"][0]["files"] = [foreign]
        assert_envelope_error(complete(fake26, nxt, token), "Bad_Request", "Invalid input: files")
        nxt["messages"][0]["files"] = [doc]
        assert complete(fake26, nxt, token).json()["success"] is True
