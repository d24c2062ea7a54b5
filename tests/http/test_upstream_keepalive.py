"""The direct transport keeps its upstream connection alive across turns (qwen/http.py).

The fake chat.qwen.ai serves persistent HTTP/1.1 connections, as the real site does, and
counts the TCP connections it accepted.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from qwenproxy import create_app
from qwenproxy.qwen.http import BrokenBody, HTTPClient, route_for
from qwenproxy.qwen.protocol import completion_body, new_chat_body
from tests.conftest import app_config
from tests.fakes.qwen_web import FakeQwen
from tests.openai_schema import sse_events


def _transport(app):
    return app.extensions["providers"].get("qwen").client.transport


def _idle(app) -> int:
    transport = _transport(app)
    return sum(pool.idle() for pool in transport.http._pools.values())


def _wait(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def _ask(client, content: str, stream: bool, chat_id: str | None = None):
    body = {"model": "qwen3-max", "stream": stream, "messages": [{"role": "user", "content": content}]}
    if chat_id:
        body["chatId"] = chat_id
    return client.post("/api/chat/completions", json=body)


def test_twenty_turns_share_one_upstream_connection(client, app, fake_qwen: FakeQwen) -> None:
    chat_id = None
    for n in range(20):
        stream = n % 2 == 1
        r = _ask(client, f"words:{5 + n}", stream, chat_id)
        assert r.status_code == 200
        if stream:
            events = sse_events(r.get_data(as_text=True))
            assert events[-1] == "[DONE]"
            text = "".join(
                (json.loads(e)["choices"] or [{"delta": {}}])[0]["delta"].get("content") or "" for e in events[:-1]
            )
        else:
            body = r.get_json()
            chat_id = body["chatId"]
            text = body["choices"][0]["message"]["content"]
        assert text == " ".join(f"w{i}" for i in range(1, 6 + n))
        # the connection is back in the pool before the next turn starts
        assert _wait(lambda: _idle(app) == 1), f"turn {n}: the upstream connection was not kept"
    completions = [r for r in fake_qwen.requests if r["path"] == "/api/v2/chat/completions"]
    assert len(completions) == 20
    assert fake_qwen.connections == 1
    assert _transport(app).connections_opened() == 1


def test_a_body_held_open_after_finished_is_closed_not_reused(client, app, fake_qwen: FakeQwen) -> None:
    fake_qwen.keep_open_after_finished = True
    fake_qwen.keep_open_seconds = 30
    started = time.monotonic()
    for _ in range(2):
        r = _ask(client, "words:3", stream=True)
        assert sse_events(r.get_data(as_text=True))[-1] == "[DONE]"
    # the answers end at ``finished``, not when the fake lets go of the body
    assert time.monotonic() - started < 10
    assert _wait(lambda: len(fake_qwen.held_open) == 2)
    assert all(h["client_closed"] for h in fake_qwen.held_open)
    # chats/new reused a connection; each held completion cost its connection
    assert fake_qwen.connections == 2


def test_without_keep_alive_every_request_has_its_own_connection(tmp_path) -> None:
    fake = FakeQwen()
    fake.keep_alive = False
    fake.start()
    app = create_app(app_config(tmp_path, fake))
    try:
        client = app.test_client()
        for _ in range(3):
            assert _ask(client, "hi", stream=False).status_code == 200
        assert len(fake.requests) == 7  # the model list, then chats/new + completions three times
        assert fake.connections == 7
        assert _idle(app) == 0
    finally:
        app.extensions["providers"].close()
        fake.stop()


def test_an_idle_connection_dropped_by_the_server_is_replaced(client, app, fake_qwen: FakeQwen) -> None:
    assert _ask(client, "one", stream=False).status_code == 200
    assert _wait(lambda: _idle(app) == 1)
    fake_qwen._server._server.drop_all()  # the server closes its idle keep-alive connections
    r = _ask(client, "two", stream=False)
    assert r.status_code == 200 and r.get_json()["choices"][0]["message"]["content"] == "Echo: two"
    assert fake_qwen.connections == 2


def test_cancelled_stream_drops_its_connection(fake_qwen: FakeQwen) -> None:
    http = HTTPClient(2.0, 5.0)
    token = fake_qwen.make_token()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = new_chat_body("qwen3-max")
    created = http.request("POST", f"{fake_qwen.url}/api/v2/chats/new", headers=headers, json_body=body)
    chat_id = json.loads(created.read())["data"]["id"]
    fake_qwen.chunk_delay = 0.05
    r = http.request(
        "POST",
        f"{fake_qwen.url}/api/v2/chat/completions?chat_id={chat_id}",
        headers=headers,
        json_body=completion_body(chat_id=chat_id, model="qwen3-max", content="words:50"),
    )
    chunks = r.iter_bytes()
    assert next(chunks)
    r.abort()  # the client went away
    with pytest.raises(BrokenBody, match="aborted"):
        for _ in chunks:
            pass
    assert http.pool(fake_qwen.url).idle() == 0
    assert _wait(lambda: bool(fake_qwen.aborted))
    http.close()


def test_proxy_and_ca_come_from_the_environment(monkeypatch, tmp_path) -> None:
    import certifi

    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(open(certifi.where(), "rb").read())
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    route = route_for("https://chat.qwen.ai/api/models")
    assert route.supported and route.proxy == ("proxy.example", 3128)
    assert route.proxy_auth == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert route.context is not None and route.context.cert_store_stats()["x509_ca"] > 0
    assert route_for("https://internal.example/x").proxy is None
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.example:1080")
    assert route_for("https://chat.qwen.ai/").supported is False  # the transport falls back to requests


class _Relay:
    """A forward proxy as far as a client can tell: records the request head of each
    connection it accepts and relays the bytes to the fake (werkzeug takes absolute URLs)."""

    def __init__(self, target_port: int) -> None:
        self.heads: list[bytes] = []
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record and data[:4] in (b"GET ", b"POST"):
                    self.heads.append(data.split(b"\r\n\r\n", 1)[0])
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


def test_an_http_proxy_from_the_environment_carries_the_requests(monkeypatch, fake_qwen: FakeQwen) -> None:
    relay = _Relay(fake_qwen._server.port)
    monkeypatch.setenv("HTTP_PROXY", f"http://bench:s3cret@127.0.0.1:{relay.port}")
    monkeypatch.setenv("NO_PROXY", "")
    http = HTTPClient(2.0, 5.0)
    try:
        token = fake_qwen.make_token()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for _ in range(3):
            created = http.request(
                "POST", f"{fake_qwen.url}/api/v2/chats/new", headers=headers, json_body=new_chat_body("qwen3-max")
            )
            assert json.loads(created.read())["data"]["id"]
        assert len(relay.heads) == 3 and fake_qwen.connections == 1  # one kept-alive connection
        first = relay.heads[0].decode()
        assert first.startswith(f"POST {fake_qwen.url}/api/v2/chats/new HTTP/1.1")  # absolute form
        assert "Proxy-Authorization: Basic YmVuY2g6czNjcmV0" in first  # bench:s3cret
    finally:
        http.close()
        relay.close()


def test_the_request_head_is_written_whole_and_refuses_header_injection(monkeypatch, fake_qwen: FakeQwen) -> None:
    """All header lines go out in one piece (qwen/http.py ``put_headers``), in order, each
    once; a value that would start a header of its own is refused before anything is sent."""
    relay = _Relay(fake_qwen._server.port)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{relay.port}")
    monkeypatch.setenv("NO_PROXY", "")
    http = HTTPClient(2.0, 5.0)
    try:
        headers = {"Authorization": f"Bearer {fake_qwen.make_token()}", "X-Request-Id": "r-1", "source": "web"}
        body = new_chat_body("qwen3-max")
        url = f"{fake_qwen.url}/api/v2/chats/new"
        assert json.loads(http.request("POST", url, headers=headers, json_body=body).read())["data"]["id"]
        lines = relay.heads[0].decode("latin-1").split("\r\n")
        sent = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        assert lines[0] == f"POST {fake_qwen.url}/api/v2/chats/new HTTP/1.1"
        names = [line.split(":", 1)[0] for line in lines[1:]]
        ours = ["Authorization", "X-Request-Id", "source", "Accept-Encoding", "Connection", "Content-Length"]
        assert names == ["Host", *ours]
        assert lines[-1] == f"Content-Length: {len(sent)}" and "X-Request-Id: r-1" in lines
        for bad in ({"X-Request-Id": "r-1\r\nX-Evil: 1"}, {"X-Request-Id": "r\n1"}, {"Bad Name:": "x"}):
            with pytest.raises(ValueError):
                http.request("POST", url, headers=bad, json_body=body)
        assert len(relay.heads) == 1  # nothing of a refused request reached the wire
        assert http.opened() == 1 and sum(p.idle() for p in http._pools.values()) == 1  # nor took a connection
    finally:
        http.close()
        relay.close()
