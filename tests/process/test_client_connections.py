"""What HTTP clients meet through the real servers (gunicorn with gevent workers, ``python
app.py``): a connection idle for 4.5 s still takes the next request (Node's fetch keeps its
sockets 4 s), ``Keep-Alive: timeout=N`` says how long, trailing slashes are rewritten (a POST
is never redirected), and ``Authorization.txt`` is created on the first start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.conftest import ROOT, Gunicorn, free_port, wait_http

IDLE = 4.5  # seconds a connection waits between two requests: longer than Node's 4 s


def _env(tmp_path: Path, fake_qwen) -> dict[str, str]:
    return {
        "SESSION_DIR": str(tmp_path / "session"),
        "QWEN_BASE_URL": fake_qwen.url,
        "QWEN_TOKEN": fake_qwen.make_token(),
        "API_KEYS_FILE": str(tmp_path / "keys" / "Authorization.txt"),
        "MODELS_FILE": str(ROOT / "AvailableModels.txt"),
        "QWEN_TRANSPORT": "direct",
    }


class AppPy:
    """``python app.py``: gevent's WSGI server in one process."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN", "GIGACHAT", "LOCAL_MODEL"))}
        full.update(env, HOST="127.0.0.1", PORT=str(self.port), QWENPROXY_ENV_FILE="", SKIP_ACCOUNT_MENU="true")
        full.update(LOGS_DIR=str(tmp_path / "logs"), LOG_LEVEL="WARNING")
        self._log = open(tmp_path / "app.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=full, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_http(self.url + "/health/live", proc=self.proc)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture(params=["gunicorn", "app.py"])
def server(request, tmp_path, fake_qwen) -> Iterator[Gunicorn | AppPy]:
    env = _env(tmp_path, fake_qwen)
    running = Gunicorn(env, workers=2) if request.param == "gunicorn" else AppPy(env, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def exchange(sock: socket.socket, reader: BinaryIO, method: str, path: str, body: dict | None = None):
    """One HTTP/1.1 request on an open connection: ``(status, headers, body)``."""
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    status_line = reader.readline()
    assert status_line, f"the server closed the connection instead of answering {method} {path}"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, reader.read(int(headers["content-length"]))
    assert headers.get("transfer-encoding") == "chunked", headers
    out = b""
    while size := int(reader.readline().strip(), 16):
        out += reader.read(size)
        reader.readline()
    reader.readline()
    return status, headers, out


def test_an_idle_connection_takes_the_next_request_after_4_5_s(server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, sock.makefile("rb") as reader:
        status, headers, _ = exchange(sock, reader, "GET", "/api/models/")
        assert status == 200
        # HTTP/1.1 keeps the connection unless told otherwise (gunicorn says so, gevent does not)
        assert headers.get("connection", "keep-alive").lower() == "keep-alive"
        assert headers["keep-alive"] == "timeout=10"
        time.sleep(IDLE)  # the idle time is what is tested: no condition to wait for instead
        messages = [{"role": "user", "content": "still there?"}]
        status, headers, body = exchange(sock, reader, "POST", "/v1/chat/completions/", {"messages": messages})
        assert status == 200, body  # served on the same connection, and the trailing slash was no redirect
        assert json.loads(body)["choices"][0]["message"]["content"] == "Echo: still there?"
        status, _, body = exchange(sock, reader, "POST", "/api/chat/", {"message": "third"})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "Echo: third"


def test_authorization_txt_is_created_on_first_start(server, tmp_path) -> None:
    keys = tmp_path / "keys" / "Authorization.txt"
    text = keys.read_text(encoding="utf-8")
    assert "One key per line" in text and all(line.startswith("#") for line in text.splitlines())
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, sock.makefile("rb") as reader:
        assert exchange(sock, reader, "GET", "/api/models")[0] == 200  # no key line yet: open


def test_streamed_error_head_and_json_answers_keep_one_connection_in_step(server) -> None:
    """gunicorn's worker sends a response head with the first body bytes and the chunked
    terminator with what is still held (``runtime/gworker.py``): on one connection a stream,
    an error, a bodiless HEAD answer and a JSON answer must each arrive whole, nothing of
    one left over for the next."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, sock.makefile("rb") as reader:
        body = {"model": "qwen3-max", "stream": True, "messages": [{"role": "user", "content": "words:30"}]}
        status, headers, streamed = exchange(sock, reader, "POST", "/v1/chat/completions", body)
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in streamed.decode().split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert text.split() == [f"w{n}" for n in range(1, 31)]
        status, _, error = exchange(sock, reader, "POST", "/v1/chat/completions", {"messages": []})
        assert status == 400 and json.loads(error)["error"]["type"] == "invalid_request_error"
        sock.sendall(b"HEAD /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert int(reader.readline().split()[1]) == 200
        while reader.readline() not in (b"\r\n", b""):
            pass  # a HEAD answer ends with its head
        status, _, answer = exchange(sock, reader, "POST", "/api/chat", {"message": "last"})
        assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == "Echo: last"
