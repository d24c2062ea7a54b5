"""Local chat CRUD and cleanup (seed §7.9) on a real SQLite database."""

from __future__ import annotations

import time

from qwenproxy.db.models import Chat, Message


def _chat(name: str, created_ms: int, users: int, assistants: int = 0) -> Chat:
    chat = Chat.create(name=name, created=created_ms)
    for i in range(users):
        Message.create(chat=chat, role="user", content=f"u{i}")
    for i in range(assistants):
        Message.create(chat=chat, role="assistant", content=f"a{i}")
    return chat


def test_crud(client) -> None:
    created = client.post("/api/chats", json={"name": "  Мой чат  "}).get_json()
    assert created["success"] is True
    chat_id = created["chatId"]
    listing = client.get("/api/chats").get_json()["chats"]
    assert [(c["id"], c["name"], c["messageCount"]) for c in listing] == [(chat_id, "Мой чат", 0)]
    assert client.put(f"/api/chats/{chat_id}/rename", json={"name": " New "}).get_json() == {
        "success": True,
        "chatId": chat_id,
        "name": "New",
    }
    for bad in ({}, {"name": ""}, {"name": "  "}, {"name": 5}):
        assert client.put(f"/api/chats/{chat_id}/rename", json=bad).status_code == 400
    history = client.get(f"/api/chats/{chat_id}").get_json()
    assert history["chatId"] == chat_id and history["history"]["name"] == "New"
    assert client.delete(f"/api/chats/{chat_id}").get_json() == {"success": True}
    for method, path in (("get", ""), ("delete", ""), ("put", "/rename")):
        r = getattr(client, method)(f"/api/chats/{chat_id}{path}", json={"name": "x"})
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "chat_not_found"


def test_history_of_a_real_conversation(client) -> None:
    answer = client.post("/api/chat", json={"message": "hello"}).get_json()
    history = client.get(f"/api/chats/{answer['chatId']}").get_json()["history"]
    assert [(m["role"], m["content"]) for m in history["messages"]] == [("user", "hello"), ("assistant", "Echo: hello")]
    assert history["messages"][1]["info"]["response_id"] == answer["parentId"]
    listing = client.get("/api/chats").get_json()["chats"][0]
    assert listing["messageCount"] == 2 and listing["userMessageCount"] == 1


def test_cleanup_requires_a_filter_or_all(client) -> None:
    _chat("a", 1, 1)
    r = client.post("/api/chats/cleanup")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "cleanup_needs_filter"
    assert client.post("/api/chats/cleanup", json={}).status_code == 400
    assert Chat.select().count() == 1
    assert client.post("/api/chats/cleanup", json={"all": True}).get_json()["deletedCount"] == 1
    assert Chat.select().count() == 0 and Message.select().count() == 0


def test_cleanup_filters_and_max_chats(client) -> None:
    now = int(time.time() * 1000)
    old_empty = _chat("old-empty", now - 10 * 86400_000, 0)
    old_busy = _chat("old-busy", now - 9 * 86400_000, 5, 5)
    new_empty = _chat("new-empty", now - 1000, 0)
    _chat("new-busy", now, 3, 3)
    r = client.post("/api/chats/cleanup", json={"olderThan": 86400_000, "userMessageCountLessThan": 1})
    assert r.get_json() == {"success": True, "deletedCount": 1, "deletedChats": [old_empty.id]}
    r = client.post("/api/chats/cleanup", json={"messageCountLessThan": 1})
    assert r.get_json()["deletedChats"] == [new_empty.id]
    r = client.post("/api/chats/cleanup", json={"maxChats": 1})
    assert r.get_json()["deletedChats"] == [old_busy.id]
    assert [c.name for c in Chat.select()] == ["new-busy"]


def test_cleanup_validation(client) -> None:
    for body in (
        {"olderThan": -1},
        {"olderThan": "x"},
        {"userMessageCountLessThan": -1},
        {"messageCountLessThan": "2"},
        {"maxChats": 0},
    ):
        r = client.post("/api/chats/cleanup", json=body)
        assert r.status_code == 400, body
        assert r.get_json()["error"]["param"] == next(iter(body))
